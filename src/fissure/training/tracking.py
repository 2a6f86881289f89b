"""MLflow tracking and registry for training runs.

- tracking URI: :func:`fissure.settings.tracking_uri` (SQLite under ``.fissure/`` unless
  ``MLFLOW_TRACKING_URI`` is set); one experiment per task, named after the registered model,
  created with ``artifact_location = fissure.settings.artifact_root()`` for local stores.
- lineage tags: ``git.commit``, ``dvc.data_hash``, ``params.hash``.
- registry: a new version gets the alias ``challenger``; the first version of a model with no
  ``champion`` yet also becomes ``champion`` (later promotion is a separate, explicit step).
- model card: every registered version gets one (:mod:`fissure.training.modelcard`): the run's
  ``model_card.md``, the version's ``model_card`` tag (its URI) and a description with the
  headline scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import warnings
from pathlib import Path

from fissure import MODEL_NAMES
from fissure.settings import artifact_root, tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"


def quiet_mlflow() -> None:
    """Keep the CLI output to our own lines: no INFO chatter, no migration logs, no hints."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*(pydantic|Pydantic|setuptools|pkg_resources).*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def mlflow_client():
    quiet_mlflow()
    import mlflow

    quiet_mlflow()  # again: importing mlflow configures its loggers (INFO)

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


def experiment_name(task: str) -> str:
    return MODEL_NAMES[task]


def ensure_experiment(task: str) -> str:
    """The task's experiment id, creating it (with fissure's artifact root) when missing."""
    mlflow = mlflow_client()
    name = experiment_name(task)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri()
    local = uri.startswith(("sqlite:", "file:", "/", "postgresql", "mysql")) or "://" not in uri
    location = artifact_root() if (local or os.environ.get("FISSURE_ARTIFACT_ROOT")) else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        return mlflow.get_experiment_by_name(name).experiment_id


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def content_hash(folder: str | Path) -> str:
    """md5 over (relative path, file md5) of every file below ``folder``, sorted."""
    folder = Path(folder)
    h = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(hashlib.md5(path.read_bytes()).digest())
    return h.hexdigest()


def _dvc_lock_hash(folder: Path) -> str | None:
    """DVC's md5 of ``folder`` (or of the tracked folder holding it) from dvc.lock.

    Only trusted while ``dvc repro`` runs this stage (DVC_STAGE is set): then the upstream
    stage's lock entry was written from the very data on disk.
    """
    if not os.environ.get("DVC_STAGE"):
        return None
    import yaml

    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text()) or {}
        rel = folder.resolve().relative_to(root).as_posix()
    except (ValueError, OSError, yaml.YAMLError):
        return None
    best = None
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path = str(out.get("path", "")).rstrip("/")
            if (rel == path or rel.startswith(path + "/")) and out.get("md5"):
                if best is None or len(path) > len(best[0]):
                    best = (path, out["md5"])
    if best is None:
        return None
    return best[1] if best[0] == rel else f"{best[1]}:{rel[len(best[0]) + 1:]}"


def data_hash(folder: str | Path) -> str:
    folder = Path(folder)
    return _dvc_lock_hash(folder) or f"md5:{content_hash(folder)}"


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat_params(prefix: str, value, out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def champion_version(name: str) -> str | None:
    """The registered model's champion version, None when it has none (or is not registered)."""
    mlflow = mlflow_client()
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def feedback_items(data: str | Path) -> int:
    """Judged feedback items in the prepared data (``feedback`` of prepare's manifest.json), 0 if none."""
    for path in (Path(data) / "manifest.json", Path(data).parent / "manifest.json"):
        try:
            return int((json.loads(path.read_text()).get("feedback") or {}).get("items", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return 0


def register(model_uri: str, task: str, run_id: str | None = None, lineage: dict | None = None) -> dict:
    """Register ``model_uri`` under the task's name; set ``challenger`` (and ``champion`` if none).
    ``lineage``: tags of the version (data hash, git commit, params hash, parent champion, feedback items)."""
    mlflow = mlflow_client()
    client = mlflow.MlflowClient()
    name = MODEL_NAMES[task]
    import contextlib
    import io as _io

    with contextlib.redirect_stderr(_io.StringIO()), contextlib.redirect_stdout(_io.StringIO()):
        mv = mlflow.register_model(model_uri, name, tags={"fissure.task": task, **(lineage or {})})  # prints otherwise
    version = str(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = [CHALLENGER]
    try:
        client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        client.set_registered_model_alias(name, CHAMPION, version)
        aliases.append(CHAMPION)
    out = {"name": name, "version": version, "aliases": aliases, "uri": f"models:/{name}/{version}"}
    if run_id:
        from fissure.training import modelcard

        try:
            out["model_card"] = modelcard.attach(name, version, run_id)
        except Exception as exc:  # noqa: BLE001 - the version stands; the card can be written later
            logging.getLogger(__name__).warning("model card of %s v%s not written: %s", name, version, exc)
            client.set_model_version_tag(name, version, modelcard.CARD_TAG, f"not written: {str(exc)[:200]}")
    return out


def aliases(name: str) -> dict:
    """alias -> version of a registered model."""
    mlflow = mlflow_client()
    rm = mlflow.MlflowClient().get_registered_model(name)
    return {a: str(v) for a, v in (rm.aliases or {}).items()}
