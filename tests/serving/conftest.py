"""One real serving stack for the whole folder: two tiny models in a temp MLflow store,
packaged with `fissure package`, served by `fissure serve` (TorchServe + KServe front) on
free ports. Always stopped at the end, with a check that no java process is left behind.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


from tests.conftest import free_ports  # noqa: E402,F401  (one picker for the suite, below the ephemeral range; absolute: test_front_metrics loads this file on its own)


@dataclass
class Server:
    url: str
    grpc: str
    ts_inference: str
    ts_management: str
    ts_metrics: str
    models: dict
    out: Path
    workdir: Path
    log: Path
    env: dict
    proc: subprocess.Popen | None = None

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=60, **kw)

    def worker_pids(self, name) -> list[int]:
        r = httpx.get(f"{self.ts_management}/models/{name}", timeout=10)
        return [w["pid"] for w in r.json()[0]["workers"]]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="session")
def built_models(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Two tiny models in a temp MLflow store, packaged by `fissure package`: (base, models, env)."""
    base = tmp_path_factory.mktemp("serving")
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "FISSURE_HOME": str(base / "home"),
        "FISSURE_TORCH_THREADS": "1",
        "FISSURE_LOG_BATCHES": "1",
        "FISSURE_TS_MODEL_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    })
    made = subprocess.run([PY, str(Path(__file__).with_name("_models.py")), str(base / "out")], env=env,
                          capture_output=True, text=True, timeout=600)
    if made.returncode:
        pytest.fail(f"building test models failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}")
    return base, json.loads(made.stdout.strip().splitlines()[-1]), env


def _serve(built_models, name: str, runtime: str, extra_env: dict | None = None, extra_args: tuple = ()):
    """Start `fissure serve` on free ports; yields a Server; stops it (and checks its exit) after."""
    base, models, env = built_models
    env = {**env, **(extra_env or {})}
    out = base / "out"
    http, grpc, tsi, tsm, tsx, tsg1, tsg2 = free_ports(7)
    workdir = base / f"work-{name}"
    log = base / f"serve-{name}.log"
    cmd = [str(Path(PY).with_name("fissure")), "serve", "--runtime", runtime,
           "--model-store", str(out / "model-store"), "--config", str(out / "config" / "config.properties"),
           "--http-port", str(http), "--grpc-port", str(grpc), "--ts-inference-port", str(tsi),
           "--ts-management-port", str(tsm), "--ts-metrics-port", str(tsx),
           "--ts-grpc-inference-port", str(tsg1), "--ts-grpc-management-port", str(tsg2),
           "--workdir", str(workdir), *extra_args]
    logf = open(log, "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(url=f"http://127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}",
                 ts_inference=f"http://127.0.0.1:{tsi}", ts_management=f"http://127.0.0.1:{tsm}",
                 ts_metrics=f"http://127.0.0.1:{tsx}", models=models, out=out, workdir=workdir,
                 log=log, env=env, proc=proc)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fissure serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(srv.url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"fissure serve not ready in 300s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield srv
    finally:
        java_pid = _torchserve_pid(workdir)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        logf.close()
        leaked = java_pid is not None and _pid_alive(java_pid)
        if leaked:  # never leave a JVM behind, even when serve itself misbehaved
            try:
                os.killpg(java_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not leaked, f"TorchServe (pid {java_pid}) outlived fissure serve"
        assert proc.returncode == 0, f"fissure serve exited with {proc.returncode} on SIGTERM"


@pytest.fixture(scope="session")
def server(built_models) -> Server:
    """The default runtime: TorchServe (the MARs' handler) behind the KServe front."""
    yield from _serve(built_models, "torchserve", "torchserve")


@pytest.fixture
def own_inprocess_server(built_models) -> Server:
    """A server of the test's own, for tests that stop it."""
    yield from _serve(built_models, "inprocess-own", "inprocess")


@pytest.fixture(scope="module")
def canary_server(built_models) -> Server:
    """An in-process server of the module's own that follows a routing file (``<workdir>.routing.json``)."""
    routing = built_models[0] / "canary-routing.json"
    routing.unlink(missing_ok=True)
    yield from _serve(built_models, "canary", "inprocess", extra_args=("--routing-file", str(routing)))


@pytest.fixture(scope="session")
def inprocess_server(built_models) -> Server:
    """The same MARs on the in-process runtime (no TorchServe)."""
    yield from _serve(built_models, "inprocess", "inprocess")


def _torchserve_pid(workdir: Path) -> int | None:
    pid_file = workdir / "tmp" / ".model_server.pid"
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- images
# (fixtures, because test modules cannot import conftest under --import-mode=importlib)


class Images:
    @staticmethod
    def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    @staticmethod
    def crack(w: int = 96, h: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
        """A grey surface with a dark wavy crack; ``seed`` varies texture and path."""
        rng = np.random.default_rng(seed)
        arr = rng.normal(150, 20, size=(h, w)).clip(0, 255)
        for x in range(w):
            y = int(h * 0.2 + x * 0.6 * h / w + 3 * np.sin(x / 5 + seed))
            arr[max(0, y - 1) : y + 2, x] = 30
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
        return img.convert(mode) if mode != "L" else img

    @classmethod
    def png(cls, seed: int = 0, w: int = 96, h: int = 64) -> bytes:
        return cls.encode(cls.crack(w, h, seed))


@pytest.fixture(scope="session")
def images() -> type[Images]:
    return Images


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    return Images.png()
