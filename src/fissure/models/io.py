"""Saving and loading models as MLflow models, with the fissure spec in the MLmodel metadata.

A model is an MLflow pyfunc model holding a state dict and the spec
(:mod:`fissure.models.pyfunc`), so loading it never unpickles code, and
``mlflow.pyfunc.load_model`` / ``mlflow models serve`` run it as well.

Any URI MLflow accepts works: ``models:/crack-segmenter@champion``, ``models:/name/3``,
``runs:/<run_id>/model``, or a local directory written by :func:`save_model`.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fissure.errors import FissureError, NotFoundError
from fissure.models import preprocess_config, pyfunc

SPEC_KEY = "fissure_spec"
LOADER_MODULE = pyfunc.__name__
DATA_DIR = "fissure"  # the pyfunc data directory: data/fissure/{weights.pt,spec.json}


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
    with tempfile.TemporaryDirectory(prefix="fissure-model-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            registered_model_name=registered_model_name,
            **_pyfunc_args(module, spec, Path(tmp), {}),
        )


def save_model(module: nn.Module, spec: dict, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write an MLflow model directory (no tracking server needed).

    ``extra_metadata`` (e.g. the run id and registered version a training run produced) is
    stored beside the spec; :func:`load_model` reports it for local paths.
    """
    mlflow = _mlflow()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="fissure-model-") as tmp:
        mlflow.pyfunc.save_model(str(path), **_pyfunc_args(module, spec, Path(tmp), extra_metadata or {}))
    return path


def _pyfunc_args(module: nn.Module, spec: dict, tmp: Path, extra_metadata: dict) -> dict:
    """The pyfunc model: state dict + spec (see fissure.models.pyfunc), never a pickled module."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = preprocess_config(spec).size
    # a float32 input schema lets `mlflow models serve` cast JSON numbers to the model's dtype
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]))
    return {
        "loader_module": LOADER_MODULE,
        "data_path": str(pyfunc.write(module, spec, tmp / DATA_DIR)),
        "metadata": {**extra_metadata, SPEC_KEY: spec},
        "signature": signature,
        "pip_requirements": _pip_requirements(),
    }


def _pip_requirements() -> list[str]:
    # Pin what the model needs to load; skips MLflow's slow dependency inference.
    import fissure

    return [f"torch=={torch.__version__.split('+')[0]}", f"fissure=={fissure.__version__}"]


_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
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
            if not versions and _LOGGED_MODEL_ID.match(name):  # the models:/m-<id> log_model returns
                return {"name": None, "version": None, "run_id": client.get_logged_model(name).source_run_id}
            if not versions:
                raise NotFoundError(f"registered model {name!r} has no versions")
            mv = versions[0]
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"{uri}: {exc.message.splitlines()[0]}") from None
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id}


def load_model(uri: str, map_location: str = "cpu") -> LoadedModel:
    """Load an MLflow-logged fissure model and its spec, ready for eval().

    Only the state dict + spec form is read (``torch.load(weights_only=True)``); older,
    pickled fissure models (the ``pytorch`` flavor) are refused, never unpickled.
    """
    mlflow = _mlflow()
    if "://" not in uri and not uri.startswith(("models:", "runs:")) and not Path(uri).exists():
        raise NotFoundError(f"model {uri!r} not found: give a models:/, runs:/ URI or an existing path")
    info = resolve(uri)
    try:
        model_info = mlflow.models.get_model_info(uri)  # reads the MLmodel file alone
        metadata = model_info.metadata or {}
        data = _fissure_data(uri, model_info.flavors, metadata)
        with tempfile.TemporaryDirectory(prefix="fissure-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)).resolve()
            folder = (local / data).resolve()
            if not folder.is_relative_to(local):
                raise FissureError(f"{uri}: its data path {data!r} leaves the model directory")
            module, spec = pyfunc.read(folder, map_location, where=uri)
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"cannot load model {uri}: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        raise NotFoundError(f"cannot load model {uri}: {exc}") from None
    registered = metadata.get("fissure_registered") or {}
    return LoadedModel(
        module=module,
        spec=spec,
        uri=uri,
        name=info["name"] or spec.get("name"),
        version=info["version"] or registered.get("version"),
        run_id=info["run_id"] or model_info.run_id or metadata.get("fissure_run_id"),
    )


def _fissure_data(uri: str, flavors: dict, metadata: dict) -> str:
    """The data path of a fissure pyfunc model, relative to its directory; refuses anything else."""
    pyfunc_conf = flavors.get("python_function") or {}
    if pyfunc_conf.get("loader_module") == LOADER_MODULE and pyfunc_conf.get("data"):
        return pyfunc_conf["data"]
    if SPEC_KEY in metadata:
        raise FissureError(
            f"{uri} is a fissure model in the old pickled format, which fissure no longer loads "
            "(unpickling can run any code): retrain it with `fissure train`, or re-log it with "
            "fissure.models.io.log_model")
    raise FissureError(f"{uri} is an MLflow model but not a fissure one (no {LOADER_MODULE} loader)")
