"""Where local state lives and how services are reached, with embedded defaults.

Everything is overridable by environment variables so that the same code runs on one
machine (``make up``) and in Kubernetes (values injected by the Helm chart).
"""

from __future__ import annotations

import os
from pathlib import Path

# Ports are part of the public contract (DEVELOPERS.md).
PORTS = {
    "inference_rest": 8080,
    "inference_grpc": 8081,
    "torchserve_metrics": 8082,
    "torchserve_management": 8085,
    "api": 8000,
    "mlflow": 5000,
    "prometheus": 9090,
}


def state_dir() -> Path:
    """The git-ignored folder for local state (MLflow store, served models, logs)."""
    path = Path(os.environ.get("FISSURE_HOME", ".fissure")).resolve()
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
