"""Fixtures of the API tests: stores on SQLite and on a real PostgreSQL server, the app under
TestClient with a token per role, and (for /predict) a live `fissure serve --runtime inprocess`.

PostgreSQL is Debian's (``/usr/lib/postgresql/<major>/bin``): one throwaway cluster per test
session in a temp folder, on a free port and a unix socket there, owned by the ``postgres`` user
when the tests run as root (PostgreSQL refuses to run as root); each test gets a fresh database.
It is always stopped at the end. `make test` installs the server when it is missing (mk/api.mk).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.conftest import free_port, free_ports  # below the ephemeral range (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
FISSURE = str(Path(sys.executable).with_name("fissure"))
PG_ROOT = Path("/usr/lib/postgresql")


# ---------------------------------------------------------------------------- PostgreSQL

def _pg_bin() -> Path | None:
    found = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "pg_ctl").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


@dataclass
class Postgres:
    port: int
    socket_dir: Path
    run_as: list[str]
    bin: Path
    _count: int = 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (started here, always stopped)."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.fail(f"no PostgreSQL server under {PG_ROOT}/*/bin: `make postgres` installs it "
                    "(apt-get install postgresql), `make test` does so itself")
    base = Path(tempfile.mkdtemp(prefix="fissure-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses root: run it as the postgres system user
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    base.chmod(0o755)
    data, log = base / "data", base / "server.log"
    subprocess.run([*run_as, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    port = free_port()
    started = subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                              "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=200",
                              "start"], capture_output=True, text=True, timeout=90)
    try:
        if started.returncode:
            pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log.read_text() if log.exists() else ''}")
        yield Postgres(port=port, socket_dir=base, run_as=run_as, bin=pg_bin)
    finally:
        subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(db_url, tmp_path):
    from fissure.api.store import Store

    s = Store(db_url, str(tmp_path / "blobs"))
    s.migrate()
    yield s
    s.close()


# ---------------------------------------------------------------------------- images and rows

class Images:
    @staticmethod
    def png(w: int = 48, h: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
        """A grey surface with a dark line; ``seed`` changes the bytes."""
        rng = np.random.default_rng(seed)
        arr = rng.normal(150, 20, size=(h, w)).clip(0, 255)
        arr[h // 2 - 1: h // 2 + 1, :] = 30
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).convert(mode).save(buf, format="PNG")
        return buf.getvalue()

    @staticmethod
    def jpeg(w: int = 48, h: int = 32, seed: int = 0) -> bytes:
        buf = io.BytesIO()
        Image.open(io.BytesIO(Images.png(w, h, seed))).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    @staticmethod
    def mask(w: int = 48, h: int = 32, rows: slice = slice(10, 14)) -> bytes:
        arr = np.zeros((h, w), np.uint8)
        arr[rows, :] = 255
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> type[Images]:
    return Images


def add_prediction(store, task: str = "classify", seed: int = 0, uncertainty: float = 0.5,
                   model: str | None = None, version: str = "1", p_crack: float = 0.7, created_at=None,
                   w: int = 48, h: int = 32, media_type: str = "image/png"):
    """A stored prediction as /predict would leave it (blobs first), without a serving front."""
    image = Images.png(w, h, seed)
    image_sha = store.blobs.put(image)
    if task == "classify":
        output = {"label": "crack" if p_crack >= 0.5 else "no_crack", "score": max(p_crack, 1 - p_crack),
                  "probabilities": {"no_crack": 1 - p_crack, "crack": p_crack}}
        mask_sha = None
    else:
        mask_sha = store.blobs.put(Images.mask(w, h))
        output = {"crack_ratio": 4 / h, "boxes": [{"box": [0, 10, w, 14], "area": 4 * w}],
                  "mask_rle": {"size": [h, w], "counts": [10, 4] * w}}
    return store.add_prediction(
        created_by="tester", image_sha256=image_sha, image_media_type=media_type, image_height=h, image_width=w,
        model_name=model or ("crack-classifier" if task == "classify" else "crack-segmenter"),
        model_version=version, mlflow_run_id="run-" + version, task=task, output=output, uncertainty=uncertainty,
        latency_ms=1.5, flag=None, overlay_sha256=mask_sha or image_sha, mask_sha256=mask_sha,
        heatmap_sha256=None, created_at=created_at)


@pytest.fixture(scope="session")
def make_prediction():
    return add_prediction


# ---------------------------------------------------------------------------- the app

@dataclass
class Client:
    """A TestClient over create_app with one token per role."""
    http: object
    store: object
    tokens: dict

    def as_(self, role: str | None) -> dict:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def get(self, path: str, role: str | None = "viewer", **kw):
        return self.http.get(path, headers={**self.as_(role), **kw.pop("headers", {})}, **kw)

    def post(self, path: str, role: str | None = "viewer", **kw):
        return self.http.post(path, headers={**self.as_(role), **kw.pop("headers", {})}, **kw)


def app_settings(tmp_path: Path, **overrides):
    from fissure.settings import Settings

    values = {"database_url": f"sqlite:///{tmp_path / 'api.db'}", "blob_url": str(tmp_path / "blobs"),
              "inference_url": f"http://127.0.0.1:{free_port()}", "retrain_command": "echo retrain-ok"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_client(tmp_path):
    """make_client(**settings) -> Client; the app's lifespan runs while the test does."""
    from fastapi.testclient import TestClient

    from fissure.api.app import create_app
    from fissure.api.auth import create_token
    from fissure.api.store import Store

    opened = []

    def make(**overrides) -> Client:
        cfg = app_settings(tmp_path, **overrides)
        store = Store(cfg.database_url, cfg.blob_url)
        store.migrate()
        tokens = {role: create_token(store, role, f"{role}-user")[0] for role in ("viewer", "annotator", "admin")}
        tc = TestClient(create_app(cfg, store), raise_server_exceptions=False)
        tc.__enter__()
        opened.append((tc, store))
        return Client(tc, store, tokens)

    yield make
    for tc, store in opened:
        tc.__exit__(None, None, None)
        store.close()


@pytest.fixture
def client(make_client) -> Client:
    return make_client()


# ---------------------------------------------------------------------------- processes

@dataclass
class Proc:
    proc: subprocess.Popen
    log: Path
    url: str = ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_process(cmd: list[str], env: dict, log: Path, ready_url: str, timeout: float = 120) -> Proc:
    """Start a server in its own process group; wait until ``ready_url`` answers 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    p = Proc(proc, log, ready_url.rsplit("/", 1)[0])
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{' '.join(cmd[:2])} exited with {proc.returncode}:\n{p.output()[-3000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            p.stop(signal.SIGKILL)
            pytest.fail(f"{' '.join(cmd[:2])} not ready in {timeout:.0f}s:\n{p.output()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def start():
    return start_process


@pytest.fixture(scope="session")
def new_port():
    return free_port


@pytest.fixture(scope="session")
def serving(tmp_path_factory):
    """Two tiny models (tests/serving/_models.py) served by `fissure serve --runtime inprocess`."""
    base = tmp_path_factory.mktemp("api-serving")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}", "FISSURE_HOME": str(base / "home"),
           "FISSURE_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1", "GIT_PYTHON_REFRESH": "quiet",
           "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    made = subprocess.run([sys.executable, str(REPO / "tests" / "serving" / "_models.py"), str(base / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    if made.returncode:
        pytest.fail(f"building the test models failed:\n{made.stderr[-3000:]}")
    models = json.loads(made.stdout.strip().splitlines()[-1])
    out = base / "out"
    http, grpc = free_ports(2)
    proc = start_process([FISSURE, "serve", "--runtime", "inprocess", "--model-store", str(out / "model-store"),
                          "--config", str(out / "config" / "config.properties"), "--http-port", str(http),
                          "--grpc-port", str(grpc), "--workdir", str(base / "work")],
                         env, base / "serve.log", f"http://127.0.0.1:{http}/v2/health/ready", timeout=300)
    try:
        yield {"url": f"http://127.0.0.1:{http}", "models": models}
    finally:
        proc.stop()


# ---------------------------------------------------------------------------- MinIO (blobs on s3://)

MINIO_CACHE = Path.home() / ".cache" / "fissure" / "bin" / "minio"


@dataclass
class Minio:
    """A MinIO server; ``env`` is what the chart gives the API pod to reach it."""
    endpoint: str
    user: str
    password: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.user, "AWS_SECRET_ACCESS_KEY": self.password}

    def fs(self):
        """An s3fs of its own (explicit endpoint, no env), to check what landed in the bucket."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key=self.user, secret=self.password,
                                 skip_instance_cache=True)


@pytest.fixture(scope="session")
def minio(tmp_path_factory):
    """A real MinIO server for the session with one bucket (started here, always stopped).

    `make minio` (part of `make test`) builds it into ~/.cache/fissure/bin; PATH is the fallback.
    """
    binary = str(MINIO_CACHE) if os.access(MINIO_CACHE, os.X_OK) else shutil.which("minio")
    if binary is None:
        pytest.fail(f"no MinIO server at {MINIO_CACHE} or on PATH: `make minio` builds it, `make test` does so itself")
    base = tmp_path_factory.mktemp("minio")
    port = free_port()
    server = Minio(f"http://127.0.0.1:{port}", "fissure-test", "fissure-test-secret", "fissure-blobs")
    env = {**os.environ, "MINIO_ROOT_USER": server.user, "MINIO_ROOT_PASSWORD": server.password,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(base)}
    proc = start_process([binary, "server", str(base / "data"), "--quiet", "--address", f"127.0.0.1:{port}",
                          "--console-address", f"127.0.0.1:{free_port()}"],
                         env, base / "minio.log", f"{server.endpoint}/minio/health/live", timeout=60)
    try:
        server.fs().mkdir(server.bucket)
        yield server
    finally:
        proc.stop()


@pytest.fixture
def s3_env(minio, monkeypatch) -> Minio:
    """The chart's S3 variables set for this test, and no s3fs instance made under other ones."""
    import s3fs

    for name, value in minio.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield minio
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(params=["file", "s3"])
def blob_url(request, tmp_path) -> str:
    """Where blobs go: a local folder, or a fresh prefix in MinIO's bucket."""
    if request.param == "file":
        return str(tmp_path / "blobs")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/{tmp_path.name}"
