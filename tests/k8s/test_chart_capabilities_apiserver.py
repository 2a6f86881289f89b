"""The chart's capability checks against a real kube-apiserver v1.34 (what `helm install` sees).

Helm asks a live cluster's discovery which APIs it serves. Without KServe's, the Gateway API's
or Argo's CRDs the chart refuses to render, naming the missing CRD and the value that turns the
feature off; with them it renders; the optional monitoring objects (`auto`) follow the
Prometheus operator's CRDs. `helm template --validate` asks the same discovery as `helm install`.

This module starts its own etcd + kube-apiserver (not the session's shared one), because it
needs a cluster where the CRDs are missing first and installs them step by step.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "cluster"))
from kube_cluster import UPSTREAM, KubeAPIServer, running_kube_apiserver  # noqa: E402
from test_k8s import CHART, tools  # noqa: E402,F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

KSERVE = UPSTREAM / "kserve-v0.20.0" / "kserve.yaml"
GATEWAY_API = UPSTREAM / "gateway-api-v1.2.1" / "standard-install.yaml"
PROMETHEUS = UPSTREAM / "prometheus-operator-v0.93.0" / "bundle.yaml"


@pytest.fixture(scope="module")
def server() -> Iterator[KubeAPIServer]:
    if not UPSTREAM.is_dir():
        pytest.skip(f"the pinned upstream CRDs are not at {UPSTREAM} (only in the fissure workplace)")
    with running_kube_apiserver() as srv:
        yield srv


def helm_validate(tools, server: KubeAPIServer, *args: str) -> subprocess.CompletedProcess:
    """`helm template --validate`: the chart rendered with the live cluster's capabilities."""
    return subprocess.run([tools["HELM"], "template", "fissure", str(CHART), "--namespace", "default",
                           "--validate", "--skip-tests", *args],
                          env=server.env(), capture_output=True, text=True, timeout=300)


def kinds(out: str) -> list[str]:
    return [d["kind"] for d in yaml.safe_load_all(out) if d]


def test_capability_checks_follow_the_live_cluster(tools, server):
    # 1. no CRD at all: refused, with the CRD and the value that turns the feature off
    proc = helm_validate(tools, server)
    assert proc.returncode != 0
    assert "this cluster does not serve" in proc.stderr, proc.stderr
    assert any(f"does not serve {k} (serving.kserve.io/" in proc.stderr for k in ("InferenceService", "ServingRuntime")) \
        or "does not serve HTTPRoute (gateway.networking.k8s.io/v1)" in proc.stderr, proc.stderr
    assert "models.<name>.enabled=false" in proc.stderr or "route.type=ingress or none" in proc.stderr, proc.stderr

    # 2. KServe only: the Gateway API routes are what is missing now
    server.apply_crds(KSERVE, kinds={"InferenceService", "ServingRuntime"})
    proc = helm_validate(tools, server)
    assert proc.returncode != 0 and "does not serve HTTPRoute (gateway.networking.k8s.io/v1)" in proc.stderr, proc.stderr
    ingress = helm_validate(tools, server, "--set", "route.type=ingress")
    assert ingress.returncode == 0, ingress.stderr
    assert "Ingress" in kinds(ingress.stdout) and "HTTPRoute" not in kinds(ingress.stdout)

    # 3. KServe and the Gateway API: renders; monitoring `auto` stays off without the operator
    server.apply_crds(GATEWAY_API, kinds={"HTTPRoute", "GRPCRoute"})
    proc = helm_validate(tools, server)
    assert proc.returncode == 0, proc.stderr
    got = kinds(proc.stdout)
    assert got.count("InferenceService") == 2 and "GRPCRoute" in got
    assert "PodMonitor" not in got and "PrometheusRule" not in got
    # Argo asked for but absent
    argo = helm_validate(tools, server, "--set", "argo.enabled=true")
    assert argo.returncode != 0 and "does not serve WorkflowTemplate (argoproj.io/v1alpha1)" in argo.stderr, argo.stderr
    assert "argo.enabled=false" in argo.stderr

    # 4. the operator's PodMonitor and PrometheusRule (not ServiceMonitor): auto renders them;
    # ServiceMonitors asked for are refused, since their CRD is still missing
    server.apply_crds(PROMETHEUS, kinds={"PodMonitor", "PrometheusRule"})
    proc = helm_validate(tools, server)
    assert proc.returncode == 0, proc.stderr
    got = kinds(proc.stdout)
    assert got.count("PodMonitor") == 3 and got.count("PrometheusRule") == 1
    sm = helm_validate(tools, server, "--set", "monitoring.serviceMonitors.enabled=true",
                       "--set", "monitoring.podMonitors.enabled=false")
    assert sm.returncode != 0 and "does not serve ServiceMonitor (monitoring.coreos.com/v1)" in sm.stderr, sm.stderr
    assert "monitoring.serviceMonitors.enabled=false" in sm.stderr
