"""The `node` fixture: one real single-node cluster (tests/cluster/node_cluster.py) for the
tests in this folder, brought up by the first test that asks for it and taken down after the
last test of this folder (not at the end of the whole session: its pods would load the machine
while the other folders' tests run), or when the session ends, whichever comes first."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from node_cluster import FIXED_PORTS, in_use, running_node_cluster

HERE = Path(__file__).resolve().parent
_node = contextlib.ExitStack()


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, CNI)")
    busy = sorted(name for port, name in FIXED_PORTS.items() if in_use(port))
    if busy or Path("/var/lib/kubelet").exists():
        pytest.skip(f"a cluster seems to be up already ({busy or '/var/lib/kubelet'}): `make cluster-down` first")
    return _node.enter_context(running_node_cluster(tmp_path_factory.mktemp("node") / "cluster"))


def pytest_runtest_teardown(item, nextitem):
    # down.sh right after this folder's last test; its checks fail that test's teardown
    if nextitem is None or HERE not in Path(nextitem.path).parents:
        _node.close()


def pytest_sessionfinish(session):
    _node.close()
