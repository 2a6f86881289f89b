"""A real stack for the load tests: two tiny models served by `fissure serve --runtime inprocess`
and `fissure api` in front of it, on free ports, with the serving and API tests' own helpers.

Locust itself only ever runs in a subprocess (`python -m loadtests.run`, which starts
`python -m locust`): gevent patches ssl and sockets at import, never in pytest's process.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `loadtests` lives at the top of the checkout (`pytest` alone does not add it)
    sys.path.insert(0, str(REPO))


def _helpers(name: str, path: Path):
    """Another test folder's conftest as a module (importlib mode cannot import it by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_serving = _helpers("_fissure_serving_conftest", REPO / "tests" / "serving" / "conftest.py")
_api = _helpers("_fissure_api_conftest", REPO / "tests" / "api" / "conftest.py")

# tiny models in a temp MLflow store, packaged (tests/serving/_models.py): a session fixture here too
built_models = _serving.built_models


@pytest.fixture(scope="module")
def front(built_models):
    """`fissure serve --runtime inprocess` on free REST and gRPC ports (stopped and checked after)."""
    yield from _serving._serve(built_models, "loadtests", "inprocess")


@dataclass
class Stack:
    rest: str
    grpc: str
    api: str
    pids: list[int]      # fissure serve, fissure api
    env: dict            # what a `python -m loadtests.run` of this stack needs (store, home)
    admin_token: str


@pytest.fixture(scope="module")
def stack(front, tmp_path_factory) -> Stack:
    """`fissure api` on a free port with its own SQLite store, predicting with `front`."""
    base = tmp_path_factory.mktemp("loadtest-api")
    admin = secrets.token_urlsafe(24)
    env = {**os.environ, "FISSURE_HOME": str(base / "home"), "FISSURE_DATABASE_URL": f"sqlite:///{base / 'api.db'}",
           "FISSURE_BLOB_URL": str(base / "blobs"), "FISSURE_INFERENCE_URL": front.url,
           "FISSURE_API_ADMIN_TOKEN": admin, "PYTHONUNBUFFERED": "1", "GIT_PYTHON_REFRESH": "quiet"}
    port = _api.free_port()
    proc = _api.start_process([str(Path(sys.executable).with_name("fissure")), "api", "--port", str(port)],
                              env, base / "api.log", f"http://127.0.0.1:{port}/ping", timeout=120)
    try:
        yield Stack(rest=front.url, grpc=front.grpc, api=f"http://127.0.0.1:{port}",
                    pids=[front.proc.pid, proc.proc.pid], env=env, admin_token=admin)
    finally:
        proc.stop()
