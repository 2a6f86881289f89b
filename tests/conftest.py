"""Shared fixtures. Each test area (core, data, training, serving, k8s) has its own folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (REPO_ROOT.parent / "shared" / "datasets").resolve()

# `kube_apiserver`: a real etcd + kube-apiserver v1.34 for the session, for any test folder
# (tests/cluster/kube_cluster.py says what it runs and how to use it).
sys.path.insert(0, str(Path(__file__).resolve().parent / "cluster"))
from kube_cluster import kube_apiserver  # noqa: E402,F401


def pytest_collection_modifyitems(session, config, items):
    """The tests on the real node (the `node` fixture, tests/cluster/conftest.py) run last in a
    plain `pytest` run: the images they need are built meanwhile, and the node's pods load the
    machine only after every other test is done. `make test` instead runs them, and the tests
    marked `beside` (minutes spent waiting on a canary's bake or Prometheus' scrapes), in a
    process of their own beside the others (mk/run-tests.sh, FISSURE_TEST_PART=beside|rest), so
    the suite takes about the longer part's wall time, not the sum."""
    on_node = {id(item) for item in items if "node" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: id(item) in on_node)  # stable: order kept otherwise
    beside = on_node | {id(item) for item in items if item.get_closest_marker("beside")}
    part = os.environ.get("FISSURE_TEST_PART", "")
    if part in ("beside", "rest"):
        keep = [item for item in items if (id(item) in beside) == (part == "beside")]
        dropped = [item for item in items if (id(item) in beside) != (part == "beside")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    elif part:
        raise pytest.UsageError(f"FISSURE_TEST_PART={part!r}: use beside, rest or leave it unset")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now, from below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) is in that range, and so is every outgoing
    connection's local port: between this call and the server's own bind (MLflow takes seconds
    to start) another test's client could take it ("address already in use", seen in CI with
    the suite's two halves running side by side). Ports below the range are only taken by
    explicit binds like these."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    high = max(low, 10000 + 4 * n)
    candidates = random.sample(range(10000, high), k=min(2000, high - 10000))
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports on {host} between 10000 and {low}")


def free_port(host: str = "127.0.0.1") -> int:
    """One port as :func:`free_ports` picks them."""
    return free_ports(1, host)[0]


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own .fissure/ and MLflow store; nothing leaks into the checkout."""
    home = tmp_path / "fissure-home"
    monkeypatch.setenv("FISSURE_HOME", str(home))
    uri = f"sqlite:///{home}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        # an earlier test's mlflow.set_tracking_uri (fissure.training.tracking) outlives its
        # environment: without this, MlflowClient() would keep writing to that test's store
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    yield


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets beside the checkout; real-data tests skip cleanly without it."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (only present in the fissure workplace)")
    return SHARED_DATASETS


# The smallest pipeline that still runs every stage: a minute on one core.
TINY_PARAMS = {
    "prepare": {"count": 12, "size": 64, "patch_size": 32, "patch_stride": 32, "patch_margin": 4,
                "val_fraction": 0.25, "test_fraction": 0.25},
    # width 8, not 4: with width 4 and one torch thread, torch 2.13 on CPU corrupts the heap
    # (the process aborts: "corrupted double-linked list"); widths 8 and 16 do not
    "train_classifier": {"epochs": 1, "batch_size": 16, "size": 32, "model": {"width": 8}},
    "train_segmenter": {"epochs": 1, "min_epochs": 0, "batch_size": 4, "size": 64, "crop": 32,
                        "model": {"encoder": "none", "base": 4, "depth": 2}},  # tiny: no ImageNet encoder
    "evaluate": {"overlays": 1},
}


@pytest.fixture
def pipeline_copy(tmp_path):
    """A tiny copy of the pipeline in a fresh git repo (:func:`fissure.training.sandbox.copy_pipeline`)."""
    from fissure.training.sandbox import copy_pipeline

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return copy_pipeline(REPO_ROOT, tmp_path / "repo", TINY_PARAMS)


def pytest_report_header(config):
    return [f"fissure: real datasets {'found' if SHARED_DATASETS.is_dir() else 'absent'} at {SHARED_DATASETS}",
            f"fissure: torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"]
