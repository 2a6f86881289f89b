"""metrics-server on `make cluster-up`'s node (issue 16 item 9): without it the resource metrics
API does not exist, and no HorizontalPodAutoscaler, KServe's CPU autoscaling included (one
autoscaling/v2 HPA per InferenceService in Standard mode, on `cpu` utilization), ever acts.

Shown for real: metrics-server (built here, manifests/cluster/metrics-server-up.sh) behind the
aggregation layer up.sh configures, `kubectl top` reading the node and a pod, and KServe's own
autoscaling acting on it: an InferenceService with `minReplicas: 1, maxReplicas: 2, scaleMetric:
cpu` (as the chart's models.<m> knobs set them), whose predictor is a busy loop, gets an HPA from
KServe's controller that scales its predictor Deployment from one replica to two on the CPU
metrics-server reports. Root only; the node comes from the `node` fixture (tests/cluster/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RESTRICTED = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65532,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def busy_inference_service(name: str, namespace: str) -> dict:
    """An InferenceService whose predictor is one busy-looping container (10m CPU requested, 100m
    allowed: ~1000% utilization), scaled by KServe on CPU between one and two replicas."""
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"predictor": {
                "minReplicas": 1, "maxReplicas": 2, "scaleMetric": "cpu", "scaleTarget": 80,
                "containers": [{
                    "name": "kserve-container", "image": "fissure.local/debian-curl:bookworm",
                    "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", "while :; do :; done"],
                    # KServe's default probe is TCP 8080, where a busy loop listens on nothing, and the
                    # HPA counts a pod that is not Ready as idle: ready once it runs
                    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                  "limits": {"cpu": "100m", "memory": "32Mi"}},
                    "securityContext": RESTRICTED}]}}}


def wait(what: str, check, seconds: float = 240):
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(3)
    pytest.fail(f"{what} not within {seconds:.0f}s")


def test_metrics_server_feeds_kubectl_top_and_kserve_scales_on_cpu(node):
    node.images("debian-curl")
    node.kserve()
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
    node.apply(busy_inference_service(name, ns))

    def kserve_hpa():  # KServe's controller makes it (Standard mode), owned by the InferenceService
        items = node.get("-n", ns, "hpa")["items"]
        return items[0] if items else None

    made = wait("KServe's HPA for the InferenceService", kserve_hpa)
    owners = {(o["kind"], o["name"]) for o in made["metadata"].get("ownerReferences", [])}
    assert ("InferenceService", name) in owners, made["metadata"]
    target = made["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and (made["spec"]["minReplicas"], made["spec"]["maxReplicas"]) == (1, 2), made
    (metric,) = made["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 80, metric
    hpa_name, deployment = made["metadata"]["name"], target["name"]

    def pod_metrics():
        proc = node.kubectl("-n", ns, "top", "pod", "--no-headers", check=False)
        return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None

    assert wait("the pod's metrics (kubectl top pod)", pod_metrics).startswith(deployment)

    def scaled():
        status = node.get("-n", ns, "hpa", hpa_name).get("status", {})
        return status if status.get("desiredReplicas") == 2 else None

    status = scaled() or wait("the HPA scaling to 2 replicas", scaled, seconds=300)
    active = {c["type"]: c["status"] for c in status.get("conditions", [])}
    assert active.get("ScalingActive") == "True", json.dumps(status, indent=1)
    utilization = status["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
    assert utilization > 80, f"a busy loop at 10m requested reported {utilization}% CPU"
    wait("the second replica", lambda: node.get("-n", ns, "deployment", deployment)["spec"]["replicas"] == 2)
    node.delete_namespace(ns)
