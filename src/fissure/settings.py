"""Every ``FISSURE_*`` setting and every port, in one place, with embedded defaults.

The same code runs on one machine (``make up``) and in Kubernetes (values injected by the
Helm chart as environment variables). :func:`settings` reads the environment once
(pydantic-settings) and a bad value is one line naming the variable (:class:`ConfigError`,
exit 2), never a traceback. Tests that change the environment call :func:`reload_settings`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fissure.errors import ConfigError

# Public ports are part of the contract (DEVELOPERS.md); the internal ones are TorchServe's,
# bound to loopback inside the pod and reached only by the front.
PORTS = {
    "inference_rest": 8080,
    "inference_grpc": 8081,
    "torchserve_metrics": 8082,
    "torchserve_management": 8085,
    "api": 8000,
    "mlflow": 5000,
    "prometheus": 9090,
    # internal (loopback)
    "torchserve_inference": 8083,
    "torchserve_grpc_inference": 7070,
    "torchserve_grpc_management": 7071,
}

LOOPBACK = "127.0.0.1"
TS_LOG_LEVELS = Literal["trace", "debug", "info", "warn", "error", "off"]


class Settings(BaseSettings):
    """``FISSURE_<NAME>`` for each field (``FISSURE_MAX_IMAGE_PIXELS=...``)."""

    model_config = SettingsConfigDict(env_prefix="FISSURE_", extra="ignore", case_sensitive=False)

    # local state
    home: Path = Field(Path(".fissure"), description="git-ignored folder for local state")
    artifact_root: str | None = Field(None, description="artifact root of locally created experiments")

    # compute
    threads: int = Field(0, ge=0, description="training torch threads (0: measured from idle CPUs)")
    torch_threads: int = Field(0, ge=0, description="serving torch threads (0: half the cores)")
    data_cache_mb: int = Field(1024, ge=0, description="decoded-image cache per dataset split")

    # ports (the public ones are part of the contract; the ts_* ones are TorchServe's, loopback)
    http_port: int = Field(PORTS["inference_rest"], gt=0, lt=65536)
    grpc_port: int = Field(PORTS["inference_grpc"], gt=0, lt=65536)
    mlflow_port: int = Field(PORTS["mlflow"], gt=0, lt=65536)
    ts_inference_port: int = Field(PORTS["torchserve_inference"], gt=0, lt=65536)
    ts_management_port: int = Field(PORTS["torchserve_management"], gt=0, lt=65536)
    ts_metrics_port: int = Field(PORTS["torchserve_metrics"], gt=0, lt=65536)
    ts_grpc_inference_port: int = Field(PORTS["torchserve_grpc_inference"], gt=0, lt=65536)
    ts_grpc_management_port: int = Field(PORTS["torchserve_grpc_management"], gt=0, lt=65536)
    serve_workdir: Path | None = Field(None, description="TorchServe logs and temp files of `fissure serve`")

    # serving: runtime, binding, limits
    # inprocess by default: measured faster at every load (docs/benchmarks.md) and needs no Java;
    # torchserve runs the MAR's handler in TorchServe workers (the chart's default ServingRuntime)
    runtime: Literal["torchserve", "inprocess"] = Field(
        "inprocess", description="model runtime behind the KServe front")
    host: str = Field(LOOPBACK, description="address the public ports bind to")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest image, in pixels (decompression bombs)")
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest request body at the front")
    max_items: int = Field(64, gt=0, description="images or tensor rows per request")
    max_request_pixels: int = Field(80_000_000, gt=0, description="decoded pixels per request, all images")
    enable_repository_api: bool = Field(
        False, description="allow model load/unload over KServe's repository API (REST and gRPC)")
    backend_timeout: float = Field(50.0, gt=0, description="seconds for one call to TorchServe (under the route's 60 s)")
    drain_seconds: float = Field(10.0, ge=0, description="grace for in-flight requests on SIGTERM")
    model_role: Literal["champion", "challenger"] = Field(
        "champion", description="what the served versions are (fissure_model_info{role}); a canary's challenger says so")
    drift_window: int = Field(500, ge=1, description="recent images per model the drift PSI is computed over")

    # serving: logs
    access_log: bool = False
    log_batches: bool = False
    ts_log_level: TS_LOG_LEVELS = "warn"
    ts_model_log_level: TS_LOG_LEVELS = "warn"
    ts_access_log: bool = False
    handler_file: Path | None = None

    # clients
    url: str = f"http://{LOOPBACK}:{PORTS['inference_rest']}"
    grpc_url: str = f"{LOOPBACK}:{PORTS['inference_grpc']}"
    grpc_authority: str | None = None

    # ------------------------------------------------------------------ api (fissure api)
    # The feedback API and its store (docs/feedback.md). None = embedded defaults under home.
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the feedback store (default: sqlite:///<home>/api.db)")
    blob_url: str | None = Field(
        None, description="fsspec URL of the content-addressed blobs (default: <home>/blobs; s3://bucket/prefix)")
    inference_url: str = Field(f"http://{LOOPBACK}:{PORTS['inference_rest']}",
                               description="the serving front (OIP v2 REST) the API predicts with; "
                                           "'{model}' in it is replaced by the model's name")
    api_host: str = Field(LOOPBACK, description="address `fissure api` binds to")
    api_port: int = Field(PORTS["api"], gt=0, lt=65536)
    api_max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="largest uploaded file (413 beyond)")
    api_rate_limit: int = Field(600, gt=0, description="requests per token per minute (429 beyond)")
    api_admin_token: SecretStr | None = Field(
        None, description="admin token `fissure api` registers when the store has none (else it makes one)")
    retrain_command: str = Field(
        "fissure retrain",
        description="shell command POST /retrain runs in the API's working directory (feedback export, "
                    "dvc repro, the gate; in a cluster the chart sets `fissure retrain --argo`)")
    # links the web UI shows when set
    mlflow_url: str | None = None
    prometheus_url: str | None = None
    grafana_url: str | None = None
    argo_url: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_service_link(cls, value, info):
        # Kubernetes gives every pod `<SERVICE>_PORT=tcp://<ip>:<port>` for each Service of its
        # namespace (service links): the release `fissure`'s `fissure-mlflow` Service makes
        # FISSURE_MLFLOW_PORT. That is not a setting: keep the default, as with the variable unset.
        if info.field_name.endswith("_port") and isinstance(value, str) and value.startswith(("tcp://", "udp://")):
            return cls.model_fields[info.field_name].default
        return value


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "FISSURE_" + str(err["loc"][0]).upper() if err.get("loc") else "a FISSURE_* variable"
        raise ConfigError(f"{name}={os.environ.get(name, '')!r}: {err['msg']}") from None


def reload_settings() -> Settings:
    settings.cache_clear()
    return settings()


def state_dir() -> Path:
    """The git-ignored folder for local state (MLflow store, served models, logs)."""
    path = Path(os.environ.get("FISSURE_HOME") or settings().home).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store under .fissure/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{state_dir() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where a locally created experiment stores artifacts (ignored when a server decides)."""
    return os.environ.get("FISSURE_ARTIFACT_ROOT") or (state_dir() / "mlartifacts").as_uri()
