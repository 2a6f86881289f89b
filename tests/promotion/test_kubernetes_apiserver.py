"""The Kubernetes actuators end to end against a REAL kube-apiserver v1.34 (tests/cluster's
`kube_apiserver` fixture: etcd + kube-apiserver with RBAC), with the pinned KServe v0.20.0 and
Gateway API v1.2.1 CRDs installed and the chart's canary objects and promotion RBAC applied.

The actuators authenticate as the chart's `<release>-promotion` ServiceAccount (a token from the
API server), so the chart's Role is what allows or refuses them. No KServe or Gateway controller
runs: FakeControllers (tests/promotion/kubeapi_standin.py) writes the status they would write
(Ready for the new generation, Knative revisions, Accepted routes) through the status
subresource with the admin's credentials, so readiness is SIMULATED; everything else (storage,
patch semantics, CRD structural schemas and CEL rules, RBAC) is the real API server's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from fissure.errors import FissureError
from fissure.promotion.actuators import TrafficState
from fissure.promotion.kubernetes import GatewayActuator, KnativeActuator, KubeSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kubeapi_standin import FakeControllers  # noqa: E402
from test_kubernetes import (CHALLENGER, CHAMPION, CHAMPION_URI, GATEWAY_CRDS, KNATIVE_SETS,  # noqa: E402
                             ISVC, KSERVE_CRD, MODEL, RELEASE, render, tools)  # noqa: F401 (fixture)

# the test server's certificate is made at its start; the fixture's kubeconfig skips TLS checks too
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]

PLURALS = {"inferenceservices": ("serving.kserve.io", "v1beta1"), "httproutes": ("gateway.networking.k8s.io", "v1")}


class ApiStore:
    """FakeControllers' access to the real API server: list, and write status as a controller does."""

    def __init__(self, api, namespace: str):
        self.api, self.namespace = api, namespace

    def items(self):
        out = []
        for plural, (group, version) in PLURALS.items():
            listed = self.api.list_namespaced_custom_object(group, version, self.namespace, plural)
            out += [(plural, self.namespace, o["metadata"]["name"], o) for o in listed["items"]]
        return out

    def set_status(self, plural, namespace, name, status):
        group, version = PLURALS[plural]
        self.api.patch_namespaced_custom_object_status(group, version, namespace, plural, name,
                                                       {"status": status})


@pytest.fixture(scope="module")
def cluster(kube_apiserver):
    if not KSERVE_CRD.is_file() or not GATEWAY_CRDS.is_file():
        pytest.skip("the pinned CRDs (../shared) are not here")
    try:
        kube_apiserver.apply_crds(KSERVE_CRD, GATEWAY_CRDS)
    except pytest.fail.Exception:
        # `kubectl wait` errors instead of waiting when it looks before the API server has
        # written a new CRD's first conditions; by now it has
        time.sleep(2)
        kube_apiserver.apply_crds(KSERVE_CRD, GATEWAY_CRDS)
    return kube_apiserver


def _admin(cluster):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def deploy(cluster, tools, *sets: str):
    """A namespace with the chart's canary objects and promotion RBAC, and a client that is the
    promotion ServiceAccount."""
    from kubernetes import client

    ns = cluster.namespace("canary")
    docs = [d for d in render(tools, *sets) if d["kind"] in
            ("InferenceService", "HTTPRoute", "ServiceAccount", "Role", "RoleBinding")]
    for d in docs:
        d["metadata"]["namespace"] = ns
        for subject in d.get("subjects", []):
            subject["namespace"] = ns
    cluster.kubectl("apply", "--server-side", "--field-manager=helm", "-n", ns, "-f", "-",
                    input="\n".join(json.dumps(d) for d in docs))
    token = cluster.kubectl("-n", ns, "create", "token", f"{RELEASE}-promotion").stdout.strip()
    conf = client.Configuration()
    conf.host = cluster.url
    conf.verify_ssl = False
    conf.api_key = {"authorization": f"Bearer {token}"}
    return ns, client.ApiClient(conf), docs


def settings(ns: str, **kw) -> KubeSettings:
    return KubeSettings(**{"namespace": ns, "release": RELEASE, "ready_timeout_s": 60, "poll_s": 0.2, **kw})


def _get(api, ns, plural, name):
    group, version = PLURALS[plural]
    return api.get_namespaced_custom_object(group, version, ns, plural, name)


def test_gateway_canary_on_a_real_api_server(cluster, tools):
    ns, sa_client, _ = deploy(cluster, tools)
    admin = _admin(cluster)
    with FakeControllers(ApiStore(admin, ns), interval_s=0.2):
        act = GatewayActuator(settings(ns), sa_client)
        act.rollback(MODEL)
        act.prepare(CHAMPION, CHALLENGER)
        assert act.state(MODEL) == TrafficState("3", "4", 0)
        act.set_weight(MODEL, 10)
        route = _get(admin, ns, "httproutes", f"{RELEASE}-{MODEL}-canary")
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [90, 10]
        act.set_weight(MODEL, 50)
        act.rollback(MODEL)
        assert act.state(MODEL) == TrafficState("3", None, 0)
        act.prepare(CHAMPION, CHALLENGER)
        act.set_weight(MODEL, 50)
        act.promote(CHALLENGER)
        assert act.state(MODEL) == TrafficState("4", None, 0)
        champion = _get(admin, ns, "inferenceservices", ISVC)
        assert champion["spec"]["predictor"]["model"]["storageUri"] == CHALLENGER.storage_uri
        route = _get(admin, ns, "httproutes", f"{RELEASE}-{MODEL}-canary")
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100, 0]

        # the chart's Role: nothing of another release, and no verb beyond get/list/watch/patch
        other = GatewayActuator(settings(ns, release="other"), sa_client)
        with pytest.raises(FissureError, match="forbids 'get' on httproutes.gateway.networking.k8s.io 'other-crack-classifier-canary'.*RBAC verb get"):
            other.state(MODEL)
    can = cluster.kubectl("auth", "can-i", "delete", "inferenceservices.serving.kserve.io", f"--as=system:serviceaccount:{ns}:{RELEASE}-promotion", "-n", ns, check=False)
    assert can.stdout.strip() == "no"


def test_knative_canary_on_a_real_api_server(cluster, tools):
    ns, sa_client, _ = deploy(cluster, tools, *KNATIVE_SETS)
    admin = _admin(cluster)
    with FakeControllers(ApiStore(admin, ns), knative=True, interval_s=0.2) as ctl:
        act = KnativeActuator(settings(ns), sa_client)
        act.prepare(CHAMPION, CHALLENGER)
        act.set_weight(MODEL, 10)
        assert act.state(MODEL) == TrafficState("3", "4", 10)
        act.rollback(MODEL)
        pred = _get(admin, ns, "inferenceservices", ISVC)["spec"]["predictor"]
        assert "canaryTrafficPercent" not in pred and pred["model"]["storageUri"] == CHAMPION_URI
        act.prepare(CHAMPION, CHALLENGER)
        act.set_weight(MODEL, 50)
        act.promote(CHALLENGER)
        assert act.state(MODEL) == TrafficState("4", None, 0)
        assert [uri for _, uri in ctl.revisions[ISVC]] == [
            CHAMPION_URI, CHALLENGER.storage_uri, CHAMPION_URI, CHALLENGER.storage_uri]
