"""``fissure package``: an MLflow model -> a TorchServe MAR plus config.properties (KServe layout).

::

    DIR/model-store/<name>.mar      handler + weights.pt + spec.json + fissure-model.json
    DIR/config/config.properties    addresses, Prometheus metrics, model_snapshot (batching)

This is the layout KServe's storage initializer mounts at ``/mnt/models``. Packaging a
second model into the same DIR merges it into ``model_snapshot``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch

import fissure
from fissure.errors import FissureError
from fissure.serving.runtime import META_FILE, SPEC_FILE, WEIGHTS_FILE
from fissure.settings import PORTS

HANDLER_NAME = "fissure_handler.py"
# Same text as serving/handlers/fissure_handler.py (a unit test keeps them equal); used when
# fissure is installed without the repository checkout (a wheel in a container image).
HANDLER_STUB = '''"""TorchServe handler packed into every fissure MAR (both crack-classifier and crack-segmenter).

Thin on purpose: the logic is ``fissure.serving.handler.FissureHandler`` (decode with
``fissure.preprocess``, batch forward, postprocess), installed in the serving environment
(``install_py_dep_per_model=false``). TorchServe instantiates the one class defined here.
"""

from fissure.serving.handler import FissureHandler


class FissureTorchServeHandler(FissureHandler):
    """Entry point TorchServe finds in this module."""
'''

KSERVE_MODEL_STORE = "/mnt/models/model-store"


def handler_file() -> Path | None:
    """The repository's handler file when running from a checkout, else None."""
    from fissure.settings import settings

    if settings().handler_file:
        return settings().handler_file
    repo = Path(__file__).resolve().parents[3] / "serving" / "handlers" / HANDLER_NAME
    return repo if repo.is_file() else None


def package(
    uri: str,
    out: str | os.PathLike,
    name: str | None = None,
    batch_size: int = 8,
    max_batch_delay: int = 10,
    workers: int = 1,
    response_timeout: int = 120,
) -> dict:
    """Package one MLflow model into ``out``; returns the model's record (also in the MAR)."""
    from fissure.models.io import load_model

    if batch_size < 1 or max_batch_delay < 0 or workers < 1:
        raise FissureError("--batch-size and --workers must be >= 1, --max-batch-delay >= 0")
    loaded = load_model(uri)
    name = name or loaded.name or loaded.spec.get("name") or loaded.task
    out = Path(out)
    store = out / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    version = str(loaded.version or "1")
    record = {
        "served_name": name,
        "name": loaded.name or name,
        "version": version,
        "run_id": loaded.run_id,
        "source_uri": uri,
        "task": loaded.task,
        "fissure_version": fissure.__version__,
        "packaged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="fissure-package-") as tmp:
        tmp = Path(tmp)
        torch.save(loaded.module.state_dict(), tmp / WEIGHTS_FILE)
        (tmp / SPEC_FILE).write_text(json.dumps(loaded.spec, indent=2))
        (tmp / META_FILE).write_text(json.dumps(record, indent=2))
        src = handler_file()
        handler = tmp / HANDLER_NAME
        if src is not None:
            shutil.copyfile(src, handler)
        else:
            handler.write_text(HANDLER_STUB)
        _archive(name, version, handler, tmp, store)
    config = out / "config" / "config.properties"
    snapshot = read_snapshot(config)
    snapshot[name] = {
        version: {
            "defaultVersion": True,
            "marName": f"{name}.mar",
            "minWorkers": workers,
            "maxWorkers": workers,
            "batchSize": batch_size,
            "maxBatchDelay": max_batch_delay,
            "responseTimeout": response_timeout,
        }
    }
    write_config(config, snapshot, workers=workers)
    return {**record, "mar": str(store / f"{name}.mar"), "config": str(config)}


def _archive(name: str, version: str, handler: Path, tmp: Path, store: Path) -> None:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    config = ModelArchiverConfig(
        model_name=name,
        handler=str(handler),
        version=version,
        serialized_file=str(tmp / WEIGHTS_FILE),
        extra_files=f"{tmp / SPEC_FILE},{tmp / META_FILE}",
        export_path=str(store),
        force=True,
    )
    try:
        generate_model_archive(config)
    except SystemExit as exc:  # the archiver exits on its own errors
        raise FissureError(f"torch-model-archiver failed for {name} (exit {exc.code})") from None


# The only members a fissure MAR has. TorchServe puts the model folder first on sys.path, so
# any other .py file (or a `fissure/` folder) in a MAR from storage could shadow our code.
MAR_MEMBERS = frozenset({HANDLER_NAME, WEIGHTS_FILE, SPEC_FILE, META_FILE, "MAR-INF/MANIFEST.json"})


def read_mar(path: str | os.PathLike) -> dict:
    """The fissure record, spec and TorchServe manifest stored in a MAR, after checking that the
    MAR holds only what `fissure package` writes and that its handler is fissure's own."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n for n in zf.namelist() if not n.endswith("/")}
            extra = sorted(names - MAR_MEMBERS)
            if extra:
                raise FissureError(f"{path}: not a fissure MAR (unexpected files {extra[:5]}); "
                                   "repackage it with `fissure package`")
            manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
            handler = zf.read(HANDLER_NAME).decode("utf-8", "replace") if HANDLER_NAME in names else ""
            meta = json.loads(zf.read(META_FILE)) if META_FILE in names else {}
            spec = json.loads(zf.read(SPEC_FILE)) if SPEC_FILE in names else {}
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise FissureError(f"{path}: not a readable MAR ({exc})") from None
    model = manifest.get("model") or {}
    if model.get("handler") != HANDLER_NAME or handler.strip() != HANDLER_STUB.strip():
        raise FissureError(f"{path}: its handler is not fissure's ({model.get('handler')!r}); "
                           "repackage it with `fissure package`")
    served = model.get("modelName") or path.stem
    meta.setdefault("served_name", served)
    meta.setdefault("name", served)
    meta.setdefault("version", model.get("modelVersion", "1"))
    return {"meta": meta, "spec": spec, "manifest": manifest, "served_name": served}


def discover(model_store: Path, only: list[str]) -> list[dict]:
    """Every fissure MAR in ``model_store`` (or the ``only`` names), checked by :func:`read_mar`."""
    mars = sorted(Path(model_store).glob("*.mar"))
    if not mars:
        raise FissureError(f"no .mar files in {model_store}; run `fissure package` first")
    found = [{**read_mar(p), "path": p} for p in mars]
    if only:
        names = {f["served_name"] for f in found}
        missing = sorted(set(only) - names)
        if missing:
            raise FissureError(f"model(s) {missing} not in {model_store} (has {sorted(names)})")
        found = [f for f in found if f["served_name"] in only]
    return found


# ---------------------------------------------------------------------------- config.properties


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    props: dict[str, str] = {}
    path = Path(path)
    if not path.exists():
        return props
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def read_snapshot(path: str | os.PathLike) -> dict:
    raw = read_properties(path).get("model_snapshot")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("models", {})
    except ValueError:
        raise FissureError(f"{path}: model_snapshot is not valid JSON") from None


def snapshot_json(models: dict) -> str:
    return json.dumps({"name": "startup.cfg", "modelCount": len(models), "models": models},
                      separators=(",", ":"), sort_keys=True)


def write_config(path: str | os.PathLike, models: dict, workers: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"""\
# TorchServe {_ts_version()} config written by `fissure package` (KServe layout: /mnt/models/config).
# `fissure serve` starts TorchServe with it and puts the KServe protocol front on
# {PORTS['inference_rest']} (REST) and {PORTS['inference_grpc']} (gRPC); TorchServe's own APIs stay on loopback.
# `fissure serve` keeps only the keys below the addresses and sets every address itself
# (TorchServe's APIs on loopback, metrics on the serving host); these are for reference.
inference_address=http://127.0.0.1:{PORTS['torchserve_inference']}
management_address=http://127.0.0.1:{PORTS['torchserve_management']}
metrics_address=http://127.0.0.1:{PORTS['torchserve_metrics']}
metrics_mode=prometheus
enable_metrics_api=true
# The handler imports the installed fissure package; no per-model pip installs.
install_py_dep_per_model=false
default_workers_per_model={workers}
default_response_timeout=120
job_queue_size=256
max_request_size=104857600
max_response_size=104857600
load_models=all
model_store={KSERVE_MODEL_STORE}
model_snapshot={snapshot_json(models)}
"""
    path.write_text(text)
    return path


def _ts_version() -> str:
    try:
        from ts.version import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0.12"
