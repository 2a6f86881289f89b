"""``fissure up`` / ``fissure down``: the local stack, run by honcho from ``.fissure/Procfile``.

``up``: make sure both registered models have a ``champion`` (else run ``dvc repro``), package
the champions into ``.fissure/serving/`` (again only when a champion's version changed), write
the Procfile (MLflow server + ``fissure serve``), print the URLs and a curl example, then run
honcho in the foreground (Ctrl-C stops everything) or detached (``--detach``: pid file
``.fissure/stack.pid``, logs in ``.fissure/logs/``; ``fissure down`` stops it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from fissure import MODEL_NAMES
from fissure.errors import FissureError, NotFoundError
from fissure.settings import PORTS, artifact_root, state_dir, tracking_uri

CHAMPION = "champion"


@dataclass
class StackOptions:
    http_port: int = PORTS["inference_rest"]
    grpc_port: int = PORTS["inference_grpc"]
    mlflow_port: int = PORTS["mlflow"]
    host: str = "127.0.0.1"
    batch_size: int = 8
    max_batch_delay: int = 10
    ready_timeout: float = 600.0


def repo_root() -> Path:
    """The project checkout (where dvc.yaml lives): the cwd or one of its parents."""
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


def champions() -> dict[str, dict | None]:
    from fissure.models.io import resolve

    found = {}
    for name in MODEL_NAMES.values():
        try:
            found[name] = resolve(f"models:/{name}@{CHAMPION}")
        except NotFoundError:
            found[name] = None
    return found


TRAIN_STAGE = {"crack-classifier": "train_classifier", "crack-segmenter": "train_segmenter"}


def _dvc(dvc: str, args: list[str], root: Path) -> None:
    code = subprocess.call([dvc, *args], cwd=root)
    if code != 0:
        raise FissureError(f"`dvc {' '.join(args)}` failed (exit {code}); fix the pipeline and run `make up` again")


def ensure_champions(echo=print) -> dict[str, dict]:
    found = champions()
    missing = [n for n, v in found.items() if v is None]
    if missing:
        root = repo_root()
        if not (root / "dvc.yaml").exists():
            raise FissureError(f"no {CHAMPION} for {missing} and no dvc.yaml in {root} to train them")
        dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
        echo(f">> no {CHAMPION} for {', '.join(missing)}: running `dvc repro` in {root} (first run trains both models)")
        _dvc(dvc, ["repro"], root)
        found = champions()
        missing = [n for n, v in found.items() if v is None]
        if missing:
            # The pipeline was up to date (its outputs cached) but this tracking store never saw
            # the runs, e.g. after .fissure/ was deleted: retrain just those stages.
            stages = [TRAIN_STAGE[n] for n in missing]
            echo(f">> pipeline up to date but no {CHAMPION} in {tracking_uri()}: `dvc repro --force --single-item {' '.join(stages)}`")
            _dvc(dvc, ["repro", "--force", "--single-item", *stages], root)
            found = champions()
            missing = [n for n, v in found.items() if v is None]
        if missing:
            raise FissureError(f"`dvc repro` finished but {missing} still have no '{CHAMPION}' alias "
                               f"in {tracking_uri()}")
    return found


def package_champions(found: dict[str, dict], opts: StackOptions, echo=print) -> Path:
    """Package each champion into .fissure/serving unless that version is already there."""
    from fissure.serving.package import package

    out = state_dir() / "serving"
    record_path = out / "packaged.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name, info in found.items():
        have = record.get(name, {})
        mar = out / "model-store" / f"{name}.mar"
        if mar.exists() and have.get("version") == info["version"] and have.get("run_id") == info["run_id"]:
            echo(f">> {name} v{info['version']} already packaged")
            continue
        echo(f">> packaging {name} v{info['version']} (champion) into {out}")
        package(f"models:/{name}@{CHAMPION}", out, name=name, batch_size=opts.batch_size,
                max_batch_delay=opts.max_batch_delay)
        record[name] = {"version": info["version"], "run_id": info["run_id"]}
        out.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2))
    return out


def procfile(opts: StackOptions, serving: Path) -> Path:
    home = state_dir()
    fissure = shutil.which("fissure") or str(Path(sys.executable).with_name("fissure"))
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    q = shlex.quote
    lines = [
        f"mlflow: exec {q(mlflow)} server --backend-store-uri {q(tracking_uri())} "
        f"--default-artifact-root {q(artifact_root())} --host {opts.host} --port {opts.mlflow_port} --workers 1",
        f"serve: exec {q(fissure)} serve --model-store {q(str(serving / 'model-store'))} "
        f"--config {q(str(serving / 'config' / 'config.properties'))} --http-port {opts.http_port} "
        f"--grpc-port {opts.grpc_port} --workdir {q(str(home / 'serve'))}",
    ]
    path = home / "Procfile"
    path.write_text("# written by `fissure up`; do not edit\n" + "\n".join(lines) + "\n")
    return path


def pid_file() -> Path:
    return state_dir() / "stack.pid"


def _port_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def running_pid() -> int | None:
    path = pid_file()
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def banner(opts: StackOptions) -> str:
    rest = f"http://{opts.host}:{opts.http_port}"
    metrics = int(os.environ.get("FISSURE_TS_METRICS_PORT") or PORTS["torchserve_metrics"])
    url_flag = "" if opts.http_port == PORTS["inference_rest"] else f" --url {rest}"
    return f"""
fissure stack
  inference REST (KServe v1/v2)  {rest}
  inference gRPC (KServe v2)     {opts.host}:{opts.grpc_port}
  TorchServe metrics             http://127.0.0.1:{metrics}/metrics
  MLflow                         http://{opts.host}:{opts.mlflow_port}

try it (any JPEG/PNG):
  fissure predict image.jpg{url_flag}
  curl -s {rest}/v1/models/crack-classifier:predict -H 'Content-Type: application/json' \\
       -d "{{\\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 image.jpg)\\"}}]}}"
  curl -s {rest}/v2/models/crack-segmenter/infer -H 'Content-Type: application/json' \\
       -d "{{\\"inputs\\": [{{\\"name\\": \\"image\\", \\"datatype\\": \\"BYTES\\", \\"shape\\": [1], \\"data\\": [\\"$(base64 -w0 image.jpg)\\"]}}]}}"
"""


def up(opts: StackOptions, detach: bool = False, echo=print) -> int:
    from fissure.serving.server import find_java

    if running_pid():
        raise FissureError(f"a detached stack is already running (pid {running_pid()}); `fissure down` first")
    find_java()
    env_port = lambda var, default: int(os.environ.get(var) or default)  # noqa: E731 - fissure serve reads the same
    for port, what in ((opts.http_port, "inference REST"), (opts.grpc_port, "inference gRPC"),
                       (opts.mlflow_port, "MLflow"),
                       (env_port("FISSURE_TS_INFERENCE_PORT", 8083), "TorchServe inference"),
                       (env_port("FISSURE_TS_MANAGEMENT_PORT", PORTS["torchserve_management"]), "TorchServe management"),
                       (env_port("FISSURE_TS_METRICS_PORT", PORTS["torchserve_metrics"]), "TorchServe metrics")):
        if not _port_free(port):
            raise FissureError(f"port {port} ({what}) is already in use; stop what uses it (`fissure down`?)")
    found = ensure_champions(echo)
    serving = package_champions(found, opts, echo)
    proc_path = procfile(opts, serving)
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(proc_path), "-d", str(repo_root()), "--no-prefix"]
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "PYTHONUNBUFFERED": "1"}
    if not detach:
        echo(banner(opts) + "\nCtrl-C stops the stack.\n")
        proc = subprocess.Popen(honcho[:-1], env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return proc.wait()
        finally:
            _reap_torchserve()
    log_path = logs / "stack.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(honcho, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pid_file().write_text(str(proc.pid))
    echo(f">> stack starting in the background (pid {proc.pid}, log {log_path})")
    deadline = time.monotonic() + opts.ready_timeout
    pending = [f"http://{opts.host}:{opts.http_port}/v2/health/ready", f"http://{opts.host}:{opts.mlflow_port}/health"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file().unlink(missing_ok=True)
            _reap_torchserve()
            raise FissureError(f"the stack exited (code {proc.returncode}); see {log_path}")
        try:
            if httpx.get(pending[0], timeout=2).status_code == 200:
                pending.pop(0)
        except httpx.HTTPError:
            pass
        if not pending:
            echo(banner(opts) + "\n`fissure down` (or `make down`) stops it.")
            return 0
        time.sleep(1)
    raise FissureError(f"the stack is not ready after {opts.ready_timeout:.0f}s; see {log_path} (`fissure down` stops it)")


def down(timeout: float = 30.0, echo=print) -> int:
    pid = running_pid()
    if pid is None:
        pid_file().unlink(missing_ok=True)
        reaped = _reap_torchserve()
        echo("no detached stack is running" + (" (stopped a leftover TorchServe)" if reaped else ""))
        return 0
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap_torchserve()
    pid_file().unlink(missing_ok=True)
    echo(f"stopped the stack (pid {pid})")
    return 0


def _reap_torchserve() -> bool:
    """Safety net: stop a TorchServe left behind by a killed `fissure serve` of this stack."""
    pid_path = state_dir() / "serve" / "tmp" / ".model_server.pid"
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:
        import psutil

        if "org.pytorch.serve.ModelServer" not in " ".join(psutil.Process(pid).cmdline()):
            return False
    except Exception:  # noqa: BLE001 - without psutil, trust our own pid file
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        time.sleep(3)
    return True
