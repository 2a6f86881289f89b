"""metrics-server on `make cluster-up`'s node (issue 16 item 9): without it the resource metrics
API does not exist, and no HorizontalPodAutoscaler, KServe's CPU autoscaling included (one
autoscaling/v2 HPA per InferenceService in Standard mode, on `cpu` utilization), ever acts.

Shown for real: metrics-server (built here, manifests/cluster/metrics-server-up.sh) behind the
aggregation layer up.sh configures, `kubectl top` reading the node and a pod, and an HPA of the
shape KServe makes scaling a busy Deployment from one replica to two on the CPU it reports.
Root only; the node comes from the `node` fixture (tests/cluster/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RESTRICTED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65532,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def busy_deployment(name: str) -> dict:
    """One busy-looping container: 10m CPU requested, 100m allowed, so its utilization is ~1000%."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "busy", "image": "fissure.local/debian-curl:bookworm", "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "while :; do :; done"],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                  "limits": {"cpu": "100m", "memory": "32Mi"}},
                    "securityContext": RESTRICTED}]}}}}


def hpa(name: str) -> dict:
    # what KServe v0.20 makes for `scaleMetric: cpu` (autoscaling/v2, Utilization on the pods' requests)
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": 1, "maxReplicas": 2,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}}


def wait(what: str, check, seconds: float = 240):
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(3)
    pytest.fail(f"{what} not within {seconds:.0f}s")


def test_metrics_server_feeds_kubectl_top_and_scales_an_hpa(node):
    node.images("debian-curl")
    node.metrics_server()
    ns = node.namespace("fissure-metrics")
    (node_name,) = [n["metadata"]["name"] for n in node.get("nodes")["items"]]

    def node_usage():
        proc = node.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
        items = json.loads(proc.stdout).get("items", []) if proc.returncode == 0 else []
        return next((i["usage"] for i in items if i["metadata"]["name"] == node_name), None)

    usage = wait("the node's usage in metrics.k8s.io", node_usage)
    assert usage["cpu"] and usage["memory"]
    top = node.kubectl("top", "node").stdout
    assert node_name in top and "CPU" in top.splitlines()[0]

    name = "busy"
    node.apply({**busy_deployment(name), "metadata": {"name": name, "namespace": ns}})
    node.apply({**hpa(name), "metadata": {"name": name, "namespace": ns}})

    def pod_metrics():
        proc = node.kubectl("-n", ns, "top", "pod", "--no-headers", check=False)
        return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None

    assert wait("the pod's metrics (kubectl top pod)", pod_metrics).startswith(name)

    def scaled():
        status = node.get("-n", ns, "hpa", name).get("status", {})
        return status if status.get("desiredReplicas") == 2 else None

    status = scaled() or wait("the HPA scaling to 2 replicas", scaled, seconds=300)
    active = {c["type"]: c["status"] for c in status.get("conditions", [])}
    assert active.get("ScalingActive") == "True", json.dumps(status, indent=1)
    utilization = status["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
    assert utilization > 80, f"a busy loop at 10m requested reported {utilization}% CPU"
    wait("the second replica", lambda: node.get("-n", ns, "deployment", name)["spec"]["replicas"] == 2)
    node.delete_namespace(ns)
