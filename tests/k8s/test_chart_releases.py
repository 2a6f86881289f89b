"""Two releases of the chart in one namespace: every object name is the release's own.

`helm template` renders the chart twice, as releases `alpha` and `beta` in the same namespace,
with every optional part on (canary rollouts, ServiceMonitors or PodMonitors, the Gateway API
routes or Ingresses, the Argo workflows), and the (kind, name) sets must not meet: Argo's
WorkflowTemplates, CronWorkflows and service account are <release>-fissure-* too, and each
release's CronWorkflows, API and RBAC name its own template. Clients keep calling the model by
its name (/v1/models/crack-classifier:predict): the served name comes from the model's MAR,
whatever the InferenceService is called.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_k8s import CHART, run, tools  # noqa: E402,F401 (fixture)

pytestmark = pytest.mark.timeout(3600)

PROFILES = {
    "default": [],
    "canary+servicemonitors+argo": ["--set", "canary.enabled=true", "--set", "argo.enabled=true",
                                    "--set", "monitoring.serviceMonitors.enabled=true",
                                    "--set", "monitoring.podMonitors.enabled=false"],
    "ingress+podmonitors": ["--set", "route.type=ingress", "--set", "monitoring.podMonitors.enabled=true"],
    "knative+canary": ["--set", "kserve.deploymentMode=Knative", "--set", "route.type=none", "--set", "canary.enabled=true",
                       "--set", "models.crack-classifier.scaleMetric=rps", "--set", "models.crack-segmenter.scaleMetric=rps"],
}


def render(tools, release: str, *extra: str) -> list[dict]:
    out = run([tools["HELM"], "template", release, str(CHART), "--namespace", "shared",
               "--kube-version", tools["K8S_SCHEMA_VERSION"], "--api-versions", "monitoring.coreos.com/v1",
               "--api-versions", "gateway.networking.k8s.io/v1", *extra]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def names(docs: list[dict]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


@pytest.mark.parametrize("profile", PROFILES, ids=list(PROFILES))
def test_two_releases_share_a_namespace(tools, profile):
    alpha = render(tools, "alpha", *PROFILES[profile])
    beta = render(tools, "beta", *PROFILES[profile])
    assert len(alpha) > 20 and len(names(alpha)) == len(alpha), "duplicate objects within one release"
    shared = names(alpha) & names(beta)
    assert shared == set(), sorted(shared)
    # every namespaced object is in the release's namespace, and nothing is cluster-scoped
    assert {d["metadata"].get("namespace") for d in alpha} == {"shared"}
    for kind in ("InferenceService", "ServingRuntime", "PodDisruptionBudget"):
        assert all(n.startswith("alpha-") for k, n in names(alpha) if k == kind), kind


def test_each_release_submits_and_schedules_its_own_retrain_template(tools):
    docs = render(tools, "beta", "--set", "argo.enabled=true", "--set", "canary.enabled=true")
    template = "beta-fissure-retrain"
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("WorkflowTemplate", template) in kinds and ("WorkflowTemplate", "beta-fissure-train") in kinds
    crons = [d for d in docs if d["kind"] == "CronWorkflow"]
    assert crons and {c["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] for c in crons} == {template}
    api = kinds[("Deployment", "beta-fissure-api")]
    env = {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FISSURE_ARGO_TEMPLATE"] == template  # `fissure retrain --argo` reads it
    (rule,) = [r for r in kinds[("Role", "beta-fissure-api-retrain")]["rules"] if "workflowtemplates" in r["resources"]]
    assert rule["resourceNames"] == [template]
    # the workflow pods' account exists, runs the templates and is bound to the promotion Role
    account = "beta-fissure-workflow"
    assert ("ServiceAccount", account) in kinds
    assert {d["spec"]["serviceAccountName"] for d in docs if d["kind"] == "WorkflowTemplate"} == {account}
    promotion = kinds[("RoleBinding", "beta-fissure-promotion")]
    assert account in {s["name"] for s in promotion["subjects"]}


def test_inference_services_are_release_prefixed_but_serve_the_model_names(tools):
    docs = render(tools, "alpha", "--set", "canary.enabled=true")
    isvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    assert set(isvcs) == {"alpha-crack-classifier", "alpha-crack-segmenter",
                          "alpha-crack-classifier-challenger", "alpha-crack-segmenter-challenger"}
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServingRuntime"}
    assert set(runtimes) == {"alpha-fissure-torchserve", "alpha-fissure-inprocess"}
    for d in isvcs.values():
        assert d["spec"]["predictor"]["model"]["runtime"] in runtimes
    # The runtime never takes the InferenceService's name ({{.Name}} is how KServe would pass it):
    # the server registers the models of the MARs in the model store, so URLs keep the model name.
    for runtime in runtimes.values():
        assert "{{.Name}}" not in yaml.safe_dump(runtime)
        assert runtime["spec"]["containers"][0]["args"][:3] == ["serve", "--model-store", "/mnt/models/model-store"]
    # The routes send the model's own URL paths to its release-prefixed predictor Service.
    routes = [d for d in docs if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == "alpha-crack-classifier-canary"]
    (route,) = routes
    (rule,) = route["spec"]["rules"]
    assert {"type": "Exact", "value": "/v1/models/crack-classifier:predict"} in [m["path"] for m in rule["matches"]]
    assert [b["name"] for b in rule["backendRefs"]] == ["alpha-crack-classifier-predictor",
                                                        "alpha-crack-classifier-challenger-predictor"]
    # ...and the API calls the model's predictor of this release.
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "alpha-fissure-api")
    env = {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FISSURE_INFERENCE_URL"] == "http://alpha-{model}-predictor.shared.svc.cluster.local"
    # the promotion controller derives the same names from --release
    from kubernetes.client import ApiClient

    from fissure.promotion.kubernetes import GatewayActuator, KnativeActuator, KubeSettings
    settings = KubeSettings(namespace="shared", release="alpha")
    act = GatewayActuator(settings, client=ApiClient())  # no request is made
    assert KnativeActuator(settings, client=ApiClient()).isvc("crack-classifier") in isvcs
    assert act._services("crack-classifier") == ("alpha-crack-classifier-predictor",
                                                 "alpha-crack-classifier-challenger-predictor")
    assert act.route("crack-classifier") == route["metadata"]["name"]
