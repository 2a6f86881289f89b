"""The `node` fixture: one real single-node cluster (tests/cluster/node_cluster.py) for the
tests in this folder, brought up by the first test that asks for it and taken down after the
last test of this folder (not at the end of the whole session: its pods would load the machine
while the other folders' tests run), or when the session ends, whichever comes first."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from node_cluster import CLUSTER, FIXED_PORTS, in_use, running_node_cluster

HERE = Path(__file__).resolve().parent
_node = contextlib.ExitStack()


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, CNI)")
    busy = sorted(name for port, name in FIXED_PORTS.items() if in_use(port))
    if not busy and _stale_kubelet_dir():
        _clean_stale_node(tmp_path_factory.mktemp("stale-node"))
    if busy or Path("/var/lib/kubelet").exists():
        pytest.skip(f"a cluster seems to be up already ({busy or '/var/lib/kubelet'}): `make cluster-down` first")
    return _node.enter_context(running_node_cluster(tmp_path_factory.mktemp("node") / "cluster"))


def _stale_kubelet_dir() -> bool:
    """/var/lib/kubelet with no kubelet and none of the node's ports open: what an interrupted run
    (a killed test job) leaves behind, not a cluster someone is using."""
    return Path("/var/lib/kubelet").exists() and subprocess.run(["pgrep", "-x", "kubelet"],
                                                                capture_output=True).returncode != 0


def _clean_stale_node(empty_state: Path) -> None:
    """down.sh with an empty state: no process to stop, only the mounts, folders, CNI bridge and
    iptables rules the interrupted run left."""
    down = subprocess.run(["bash", str(CLUSTER / "down.sh"), str(empty_state)], capture_output=True, text=True,
                          timeout=600)
    print(f"\nnode fixture: cleaned what an interrupted run left (/var/lib/kubelet without a kubelet):\n"
          f"{down.stdout[-1500:]}{down.stderr[-500:]}")


def pytest_runtest_teardown(item, nextitem):
    # down.sh right after this folder's last test; its checks fail that test's teardown
    if nextitem is None or HERE not in Path(nextitem.path).parents:
        _node.close()


def pytest_sessionfinish(session):
    _node.close()
