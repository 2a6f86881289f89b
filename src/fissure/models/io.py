"""Saving and loading models as MLflow models, with the fissure spec in the MLmodel metadata.

Any URI MLflow accepts works: ``models:/crack-segmenter@champion``, ``models:/name/3``,
``runs:/<run_id>/model``, or a local directory written by :func:`save_model`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fissure.errors import FissureError, NotFoundError

SPEC_KEY = "fissure_spec"


@dataclass
class LoadedModel:
    module: nn.Module
    spec: dict
    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    tags: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.spec["task"]


def _mlflow():
    import mlflow

    from fissure.settings import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    return mlflow


def log_model(module: nn.Module, spec: dict, *, name: str = "model", registered_model_name: str | None = None):
    """Log ``module`` to the active MLflow run; returns mlflow's ModelInfo."""
    mlflow = _mlflow()
    return mlflow.pytorch.log_model(
        module.cpu().eval(),
        name=name,
        metadata={SPEC_KEY: spec},
        registered_model_name=registered_model_name,
        pip_requirements=_pip_requirements(),
        # pickle keeps the nn.Module (Grad-CAM needs its layers); pt2 would trace it away.
        serialization_format="pickle",
    )


def save_model(module: nn.Module, spec: dict, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write an MLflow model directory (no tracking server needed).

    ``extra_metadata`` (e.g. the run id and registered version a training run produced) is
    stored beside the spec; :func:`load_model` reports it for local paths.
    """
    mlflow = _mlflow()
    path = Path(path)
    mlflow.pytorch.save_model(
        module.cpu().eval(),
        str(path),
        metadata={**(extra_metadata or {}), SPEC_KEY: spec},
        pip_requirements=_pip_requirements(),
        serialization_format="pickle",
    )
    return path


def _pip_requirements() -> list[str]:
    # Pin what the model needs to load; skips MLflow's slow dependency inference.
    import fissure

    return [f"torch=={torch.__version__.split('+')[0]}", f"fissure=={fissure.__version__}"]


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


def resolve(uri: str) -> dict:
    """Registry facts for a URI: {'name', 'version', 'run_id'} (None where not applicable)."""
    mlflow = _mlflow()
    match = _MODELS_URI.match(uri)
    if not match:
        run = re.match(r"^runs:/(?P<run>[^/]+)/", uri)
        return {"name": None, "version": None, "run_id": run.group("run") if run else None}
    client = mlflow.MlflowClient()
    name, alias, version = match.group("name", "alias", "version")
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version:
            mv = client.get_model_version(name, version)
        else:
            versions = client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"], max_results=1)
            if not versions:
                raise NotFoundError(f"registered model {name!r} has no versions")
            mv = versions[0]
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"{uri}: {exc.message.splitlines()[0]}") from None
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id}


def load_model(uri: str, map_location: str = "cpu") -> LoadedModel:
    """Load an MLflow-logged fissure model and its spec, ready for eval()."""
    mlflow = _mlflow()
    if "://" not in uri and not uri.startswith(("models:", "runs:")) and not Path(uri).exists():
        raise NotFoundError(f"model {uri!r} not found: give a models:/, runs:/ URI or an existing path")
    info = resolve(uri)
    try:
        model_info = mlflow.models.get_model_info(uri)
        module = mlflow.pytorch.load_model(uri, map_location=map_location)
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"cannot load model {uri}: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        raise NotFoundError(f"cannot load model {uri}: {exc}") from None
    metadata = model_info.metadata or {}
    spec = metadata.get(SPEC_KEY)
    registered = metadata.get("fissure_registered") or {}
    if not spec:
        raise FissureError(f"{uri} is an MLflow model but not a fissure one (no {SPEC_KEY} metadata)")
    return LoadedModel(
        module=module.to(memory_format=torch.channels_last).eval(),  # see build_model
        spec=spec,
        uri=uri,
        name=info["name"] or spec.get("name"),
        version=info["version"] or registered.get("version"),
        run_id=info["run_id"] or model_info.run_id or metadata.get("fissure_run_id"),
    )
