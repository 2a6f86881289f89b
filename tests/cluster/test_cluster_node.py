"""`make cluster-up`'s node for real (tests/cluster/node_cluster.py): etcd, the control plane,
containerd + runc, the CNI bridge, kubelet and kube-proxy run a pod under Pod Security
`restricted`, the API server reaches the kubelet, and kube-proxy routes a ClusterIP. down.sh and
the check that nothing is left run after this folder's last test (the `node` fixture). Root only."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"},
       "spec": {"containers": [{
           "name": "pause", "image": "fissure.local/pause:3.10", "imagePullPolicy": "Never",
           "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65535,
                               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}}


def test_the_node_runs_a_restricted_pod_and_routes_a_cluster_ip(node):
    ns = node.namespace("fissure-node")
    node.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(POD))
    deadline, pod = time.monotonic() + 300, {}
    while time.monotonic() < deadline and pod.get("status", {}).get("phase") != "Running":
        time.sleep(2)
        pod = node.get("-n", ns, "pod", "hello")
    assert pod["status"].get("phase") == "Running", json.dumps(pod.get("status"), indent=1)[-3000:]
    assert pod["status"]["podIP"].startswith("10.244.0.")  # from the CNI bridge's range
    # the API server reaches the kubelet (logs and exec go through it)
    node.kubectl("-n", ns, "logs", "hello")
    # kube-proxy routes the `kubernetes` Service's ClusterIP to the API server
    ctx = ssl.create_default_context(cafile=str(node.state / "pki" / "ca.crt"))
    deadline, version = time.monotonic() + 60, None
    while version is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("https://10.96.0.1/version", context=ctx, timeout=5) as r:
                version = json.load(r)
        except OSError:
            time.sleep(2)
    assert version and version["gitVersion"] == node.version
    node.delete_namespace(ns)
