"""`make cluster-up` / `make cluster-down` for real: a single-node cluster on this machine
(etcd, control plane, containerd + runc, CNI bridge, kubelet) runs a pod, then everything is
stopped and what kubelet leaves is removed. Root only; about two minutes."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kube_cluster import REPO, cluster_paths

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
CLUSTER = REPO / "manifests" / "cluster"
FIXED_PORTS = {16443: "kube-apiserver", 12379: "etcd", 10250: "kubelet", 10257: "controller-manager",
               10259: "scheduler"}


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "namespace": "default"},
       "spec": {"containers": [{
           "name": "pause", "image": "fissure.local/pause:3.10", "imagePullPolicy": "Never",
           "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65535,
                               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}}


def test_single_node_cluster_runs_a_pod_and_cleans_up(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, CNI)")
    busy = {name for port, name in FIXED_PORTS.items() if _in_use(port)}
    if busy or Path("/var/lib/kubelet").exists():
        pytest.skip(f"a cluster seems to be up already ({busy or '/var/lib/kubelet'}): `make cluster-down` first")
    subprocess.run(["make", "-s", "cluster-node-apt"], cwd=REPO, check=True)
    paths = cluster_paths()
    state = tmp_path / "cluster"
    kubectl = [f"{paths['K8S_RELEASE_BIN']}/kubectl", "--kubeconfig", str(state / "kubeconfigs" / "admin")]
    try:
        up = subprocess.run(["bash", str(CLUSTER / "up.sh"), paths["K8S_RELEASE_BIN"], str(state)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        created = subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(POD),
                                 capture_output=True, text=True)
        assert created.returncode == 0, created.stderr
        deadline, phase = time.monotonic() + 300, ""
        while time.monotonic() < deadline and phase != "Running":
            pod = json.loads(subprocess.run([*kubectl, "get", "pod", "hello", "-o", "json"],
                                            capture_output=True, text=True, check=True).stdout)
            phase = pod["status"].get("phase", "")
            time.sleep(2)
        assert phase == "Running", json.dumps(pod.get("status"), indent=1)[-3000:]
        assert pod["status"]["podIP"].startswith("10.244.0.")  # from the CNI bridge's range
        # the API server reaches the kubelet (logs, exec go through it)
        logs = subprocess.run([*kubectl, "logs", "hello"], capture_output=True, text=True)
        assert logs.returncode == 0, logs.stderr
        # kube-proxy routes the `kubernetes` Service's ClusterIP to the API server
        ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        deadline, version = time.monotonic() + 60, None
        while version is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("https://10.96.0.1/version", context=ctx, timeout=5) as r:
                    version = json.load(r)
            except OSError:
                time.sleep(2)
        assert version and version["gitVersion"] == paths["K8S_VERSION"]
    finally:
        down = subprocess.run(["bash", str(CLUSTER / "down.sh"), str(state)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path("/var/lib/kubelet").exists() and not Path("/var/log/pods").exists()
    assert not state.exists()
    mounts = Path("/proc/self/mounts").read_text()
    assert "/var/lib/kubelet" not in mounts and str(state) not in mounts
    assert not any(_in_use(p) for p in FIXED_PORTS), "a cluster process still listens"
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in rules and 'name: \\"fissure\\"' not in rules, rules[-2000:]
