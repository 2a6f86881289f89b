"""The Kubernetes actuators (fissure.promotion.kubernetes) through the real `kubernetes` client.

Against what: a STAND-IN for kube-apiserver (tests/promotion/kubeapi_standin.py), an in-test HTTP
server speaking the REST calls the actuators make, seeded with the objects `helm template`
renders from charts/fissure with canary.enabled, enforcing the Role the chart renders for the
controller, and validating every patched object against the CRD schemas of
../shared/crds/kserve-v0.20.0 and ../shared/k8s-upstream/gateway-api-v1.2.1 (converted as
tests/k8s/crd2jsonschema.py does, strict). KServe and a Gateway controller are played by
FakeControllers, which sets the objects' status (Ready, revisions, Accepted) itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from fissure.errors import FissureError, NotFoundError, Unavailable, UsageError
from fissure.promotion.actuators import Actuator, ModelRef, TrafficState
from fissure.promotion.kubernetes import (ANN_CHAMPION_URI, GATEWAY, KSERVE, GatewayActuator,
                                          KnativeActuator, KubeSettings)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "k8s"))
import crd2jsonschema  # noqa: E402
from kubeapi_standin import FakeControllers, Resource, StandInAPIServer  # noqa: E402

SHARED = Path(os.environ.get("FISSURE_SHARED", REPO.parent / "shared"))
KSERVE_CRD = SHARED / "crds" / "kserve-v0.20.0" / "serving.kserve.io_inferenceservices.yaml"
GATEWAY_CRDS = SHARED / "k8s-upstream" / "gateway-api-v1.2.1" / "standard-install.yaml"
NS, RELEASE, MODEL = "fissure", "fissure", "crack-classifier"
ISVC = f"{RELEASE}-{MODEL}"  # the chart names a model's InferenceService after the release
CHAMPION_URI = "s3://fissure-models/crack-classifier/champion"
CHAMPION = ModelRef(MODEL, "3", storage_uri=CHAMPION_URI)
CHALLENGER = ModelRef(MODEL, "4", run_id="r4", storage_uri="s3://fissure-models/crack-classifier/versions/4")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def schemas(tmp_path_factory) -> dict[str, dict]:
    """JSON schemas of InferenceService v1beta1 and HTTPRoute v1, from the pinned CRDs."""
    if not KSERVE_CRD.is_file() or not GATEWAY_CRDS.is_file():
        pytest.skip(f"the pinned CRDs are not at {KSERVE_CRD} and {GATEWAY_CRDS} (../shared)")
    out = tmp_path_factory.mktemp("crd-schemas")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for src in (KSERVE_CRD, GATEWAY_CRDS):
        for doc in yaml.load_all(src.read_text(), Loader=loader):
            crd2jsonschema.convert_crd(doc, out)
    return {kind: json.loads((out / f"{kind}.json").read_text())
            for kind in ("inferenceservice_v1beta1", "httproute_v1")}


def _make_paths() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    for target in ("k8s-tools", "k8s-schemas"):
        proc = subprocess.run(["make", "--no-print-directory", "-s", target], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"make {target} failed (helm and kubeconform are built with Go once):\n"
                        f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    proc = subprocess.run(["make", "--no-print-directory", "-s", "k8s-paths"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    return _make_paths()


def render(tools, *sets: str) -> list[dict]:
    cmd = [tools["HELM"], "template", RELEASE, str(REPO / "charts" / "fissure"), "--namespace", NS,
           "--kube-version", tools["K8S_SCHEMA_VERSION"], "--api-versions", "gateway.networking.k8s.io/v1",
           "--skip-tests", "--set", "canary.enabled=true"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


KNATIVE_SETS = ("kserve.deploymentMode=Knative", "route.type=none",
                "models.crack-classifier.scaleMetric=concurrency", "models.crack-segmenter.scaleMetric=concurrency")


@pytest.fixture(scope="session")
def standard_render(tools) -> list[dict]:
    return render(tools)


@pytest.fixture(scope="session")
def knative_render(tools) -> list[dict]:
    return render(tools, *KNATIVE_SETS)


def _role(docs: list[dict]) -> list[dict]:
    return next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-promotion"))["rules"]


def standin(schemas, docs: list[dict], rbac: bool = True, rules: list[dict] | None = None) -> StandInAPIServer:
    server = StandInAPIServer(
        [Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", schemas["inferenceservice_v1beta1"]),
         Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", schemas["httproute_v1"])],
        role_rules=(rules if rules is not None else _role(docs)) if rbac else None)
    for doc in docs:
        if doc["kind"] in ("InferenceService", "HTTPRoute"):
            server.add(doc)
    return server


def client_for(url: str):
    from kubernetes import client

    conf = client.Configuration()
    conf.host = url
    conf.retries = 0
    return client.ApiClient(conf)


def settings(**kw) -> KubeSettings:
    base = dict(namespace=NS, release=RELEASE, ready_timeout_s=20, poll_s=0.05, request_timeout_s=5)
    return KubeSettings(**{**base, **kw})


@pytest.fixture
def gateway(schemas, standard_render):
    with standin(schemas, standard_render) as server, FakeControllers(server) as ctl:
        yield GatewayActuator(settings(), client_for(server.url)), server, ctl


@pytest.fixture
def knative(schemas, knative_render):
    with standin(schemas, knative_render) as server, FakeControllers(server, knative=True) as ctl:
        yield KnativeActuator(settings(), client_for(server.url)), server, ctl


def isvc(server, name=ISVC) -> dict:
    return server.get("inferenceservices", NS, name)


def route(server) -> dict:
    return server.get("httproutes", NS, f"{RELEASE}-{MODEL}-canary")


def weights(server) -> list[int]:
    return [b["weight"] for b in route(server)["spec"]["rules"][0]["backendRefs"]]


def assert_every_patch_valid(server, schemas) -> None:
    """Each patch the actuator sent was applied (none refused) and left a schema-valid object."""
    patches = server.patches()
    assert patches, "the actuator sent no patch"
    for rec in patches:
        assert rec.status == 200, f"PATCH {rec.path} ({rec.content_type}) refused: {rec.status}"
        assert rec.content_type in ("application/merge-patch+json", "application/json-patch+json")
        kind = "httproute_v1" if "/httproutes/" in rec.path else "inferenceservice_v1beta1"
        jsonschema.Draft7Validator(schemas[kind]).validate(rec.result)


# ------------------------------------------------------------------------------ the stand-in itself


def test_standin_refuses_what_the_api_server_refuses(gateway):
    """The stand-in's checks have teeth: an invalid object or a failed JSON patch test is a 422."""
    act, server, _ = gateway
    canary = f"{RELEASE}-{MODEL}-canary"
    with pytest.raises(FissureError, match=r"InferenceService.serving.kserve.io \"fissure-crack-classifier\" is invalid"):
        act.kube.merge_patch(KSERVE, ISVC, {"spec": {"predictor": {"canaryTrafficPercnt": 1}}})
    with pytest.raises(FissureError, match="is invalid.*'10' is not of type 'integer'"):
        act.kube.json_patch(GATEWAY, canary, [{"op": "add", "path": "/spec/rules/0/backendRefs/0/weight", "value": "10"}])
    with pytest.raises(FissureError, match="testing value /spec/rules/0/backendRefs/0/name failed"):
        act.kube.json_patch(GATEWAY, canary, [{"op": "test", "path": "/spec/rules/0/backendRefs/0/name", "value": "x"}])
    assert weights(server) == [100, 0] and isvc(server)["metadata"]["generation"] == 1


# ------------------------------------------------------------------------------ Standard mode


def test_actuators_implement_the_protocol(gateway, knative):
    assert isinstance(gateway[0], Actuator) and gateway[0].name == "kserve-gateway"
    assert isinstance(knative[0], Actuator) and knative[0].name == "kserve-knative"


def test_gateway_canary_moves_the_route_weights_and_promotes(gateway, schemas):
    act, server, _ = gateway
    assert weights(server) == [100, 0]
    act.prepare(CHAMPION, CHALLENGER)
    challenger = isvc(server, f"{RELEASE}-{MODEL}-challenger")
    assert challenger["spec"]["predictor"]["model"]["storageUri"] == CHALLENGER.storage_uri
    assert challenger["metadata"]["annotations"]["fissure.dev/version"] == "4"
    assert weights(server) == [100, 0]
    assert act.state(MODEL) == TrafficState("3", "4", 0)

    for percent in (10, 50):
        act.set_weight(MODEL, percent)
        assert weights(server) == [100 - percent, percent]
        assert act.state(MODEL) == TrafficState("3", "4", percent)
    # the champion's own InferenceService was not touched during the canary
    assert isvc(server)["metadata"]["generation"] == 1

    act.promote(CHALLENGER)
    champion = isvc(server)
    assert champion["spec"]["predictor"]["model"]["storageUri"] == CHALLENGER.storage_uri
    assert champion["status"]["observedGeneration"] == champion["metadata"]["generation"] == 2
    assert weights(server) == [100, 0]
    assert act.state(MODEL) == TrafficState("4", None, 0)
    assert route(server)["metadata"]["annotations"][ANN_CHAMPION_URI] == CHALLENGER.storage_uri
    assert_every_patch_valid(server, schemas)
    # only get and patch, and only on the chart's objects for this model (the Role allows nothing else)
    touched = {r.path.split("?")[0].rsplit("/", 1)[1] for r in server.requests}
    assert touched == {ISVC, f"{RELEASE}-{MODEL}-challenger", f"{RELEASE}-{MODEL}-canary"}
    assert {r.method for r in server.requests} == {"GET", "PATCH"}


def test_gateway_rollback_gives_the_champion_everything_in_any_state(gateway, schemas):
    act, server, _ = gateway
    act.rollback(MODEL)  # nothing deployed: fine
    assert weights(server) == [100, 0] and act.state(MODEL).challenger_version is None
    act.prepare(CHAMPION, CHALLENGER)
    act.set_weight(MODEL, 50)
    act.rollback(MODEL)
    assert weights(server) == [100, 0]
    assert act.state(MODEL) == TrafficState("3", None, 0)
    assert isvc(server)["spec"]["predictor"]["model"]["storageUri"] == CHAMPION_URI
    before = len(server.patches())
    act.rollback(MODEL)  # again: same state
    assert weights(server) == [100, 0]
    assert all(r.status == 200 for r in server.patches()[before:])
    assert_every_patch_valid(server, schemas)


def test_gateway_rollback_undoes_a_promotion_stopped_half_way(gateway):
    act, server, _ = gateway
    act.prepare(CHAMPION, CHALLENGER)
    act.set_weight(MODEL, 50)
    # promote() died after re-pointing the champion, before the route: simulate that step
    act.kube.merge_patch(KSERVE, ISVC, {"spec": {"predictor": {"model": {"storageUri": CHALLENGER.storage_uri}}}})
    act.rollback(MODEL)
    assert isvc(server)["spec"]["predictor"]["model"]["storageUri"] == CHAMPION_URI
    assert weights(server) == [100, 0]
    assert act.state(MODEL) == TrafficState("3", None, 0)


def test_gateway_refuses_weight_without_challenger_and_bad_percent(gateway):
    act, server, _ = gateway
    with pytest.raises(FissureError, match="no challenger is prepared for crack-classifier"):
        act.set_weight(MODEL, 10)
    for bad in (-1, 101, True, 12.5):
        with pytest.raises(UsageError, match="integer 0..100"):
            act.set_weight(MODEL, bad)
    with pytest.raises(UsageError, match="no storage_uri"):
        act.prepare(CHAMPION, ModelRef(MODEL, "5"))
    assert weights(server) == [100, 0]


def test_prepare_waits_for_ready_with_a_timeout_and_leaves_the_champion_serving(schemas, standard_render):
    challenger = f"{RELEASE}-{MODEL}-challenger"
    with standin(schemas, standard_render) as server, FakeControllers(server) as ctl:
        ctl.stuck[challenger] = "ModelLoadFailed"
        act = GatewayActuator(settings(ready_timeout_s=0.5), client_for(server.url))
        with pytest.raises(Unavailable) as err:
            act.prepare(CHAMPION, CHALLENGER)
        msg = str(err.value)
        assert f"waiting for InferenceService {NS}/{challenger} to serve generation 2 (Ready)" in msg
        assert "ModelLoadFailed" in msg and "\n" not in msg
        assert weights(server) == [100, 0]
        act.rollback(MODEL)
        assert weights(server) == [100, 0]


def test_weights_wait_for_the_gateway_to_accept_them(schemas, standard_render):
    with standin(schemas, standard_render) as server, FakeControllers(server, no_gateway=True):
        act = GatewayActuator(settings(ready_timeout_s=0.3), client_for(server.url))
        with pytest.raises(Unavailable, match="to be accepted by its Gateway.*no Gateway reports on it yet"):
            act.set_weight(MODEL, 0)


# ------------------------------------------------------------------------------ errors


def test_missing_rbac_verb_is_one_line_naming_it(schemas, standard_render):
    read_only = [{**rule, "verbs": ["get", "list", "watch"]} for rule in _role(standard_render)]
    with standin(schemas, standard_render, rules=read_only) as server, FakeControllers(server):
        act = GatewayActuator(settings(), client_for(server.url))
        assert act.state(MODEL) == TrafficState(None, None, 0)
        with pytest.raises(FissureError) as err:
            act.prepare(CHAMPION, CHALLENGER)
    msg = str(err.value)
    assert "needs RBAC verb patch" in msg and "httproutes.gateway.networking.k8s.io" in msg
    assert err.value.http_status == 403 and "\n" not in msg


def test_the_chart_role_covers_only_its_release(schemas, standard_render):
    with standin(schemas, standard_render) as server, FakeControllers(server):
        act = GatewayActuator(settings(release="other"), client_for(server.url))
        with pytest.raises(FissureError, match="forbids 'get' on httproutes.gateway.networking.k8s.io 'other-crack-classifier-canary'"):
            act.state(MODEL)


def test_missing_objects_are_not_found(schemas, standard_render, knative_render):
    with standin(schemas, standard_render, rbac=False) as server, FakeControllers(server):
        with pytest.raises(NotFoundError, match="HTTPRoute fissure/fissure-no-such-model-canary not found.*canary.enabled"):
            GatewayActuator(settings(), client_for(server.url)).set_weight("no-such-model", 10)
    with standin(schemas, knative_render, rbac=False) as server, FakeControllers(server, knative=True):
        with pytest.raises(NotFoundError, match="InferenceService fissure/fissure-no-such-model not found"):
            KnativeActuator(settings(), client_for(server.url)).state("no-such-model")


def test_unreachable_api_server_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    for cls in (GatewayActuator, KnativeActuator):
        act = cls(settings(request_timeout_s=2), client_for(f"http://127.0.0.1:{port}"))
        with pytest.raises(Unavailable, match=f"Kubernetes API http://127.0.0.1:{port} unreachable") as err:
            act.rollback(MODEL)
        assert "\n" not in str(err.value)


def test_no_kubeconfig_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Unavailable, match="no Kubernetes config"):
        GatewayActuator(settings(kubeconfig=str(tmp_path / "missing")))


# ------------------------------------------------------------------------------ Knative mode


def _predictor(server) -> dict:
    return isvc(server)["spec"]["predictor"]


def test_knative_canary_uses_canary_traffic_percent_and_promotes(knative, schemas):
    act, server, ctl = knative
    assert act.state(MODEL) == TrafficState(None, None, 0)
    act.prepare(CHAMPION, CHALLENGER)
    pred = _predictor(server)
    assert pred["canaryTrafficPercent"] == 0 and pred["model"]["storageUri"] == CHALLENGER.storage_uri
    assert isvc(server)["metadata"]["annotations"][ANN_CHAMPION_URI] == CHAMPION_URI
    status = isvc(server)["status"]["components"]["predictor"]
    assert status["latestReadyRevision"] == f"{ISVC}-predictor-00002"
    assert status["latestRolledoutRevision"] == f"{ISVC}-predictor-00001"
    assert act.state(MODEL) == TrafficState("3", "4", 0)
    for percent in (10, 50):
        act.set_weight(MODEL, percent)
        assert _predictor(server)["canaryTrafficPercent"] == percent
        assert act.state(MODEL) == TrafficState("3", "4", percent)
    act.promote(CHALLENGER)
    assert "canaryTrafficPercent" not in _predictor(server)
    assert act.state(MODEL) == TrafficState("4", None, 0)
    assert len(ctl.revisions[ISVC]) == 2  # promoting made no new revision
    act.rollback(MODEL)  # after a promotion there is nothing to roll back
    assert _predictor(server)["model"]["storageUri"] == CHALLENGER.storage_uri
    assert_every_patch_valid(server, schemas)
    assert {r.path.split("?")[0].rsplit("/", 1)[1] for r in server.requests} == {ISVC}


def test_promoting_the_old_champion_back_restores_it(gateway, knative, schemas):
    """What the controller does when MLflow refused to move the alias after a promotion."""
    for act, server, _ in (gateway, knative):
        act.prepare(CHAMPION, CHALLENGER)
        act.set_weight(MODEL, 50)
        act.promote(CHALLENGER)
        act.promote(CHAMPION)
        assert isvc(server)["spec"]["predictor"]["model"]["storageUri"] == CHAMPION_URI
        assert "canaryTrafficPercent" not in isvc(server)["spec"]["predictor"]
        assert act.state(MODEL) == TrafficState("3", None, 0), act.name
        assert_every_patch_valid(server, schemas)


def test_actuators_take_the_cli_options(schemas, standard_render):
    with standin(schemas, standard_render) as server, FakeControllers(server):
        act = GatewayActuator(client=client_for(server.url), namespace=NS, release=None)
        assert (act.settings.namespace, act.settings.release) == (NS, "fissure")
        assert act.state(MODEL) == TrafficState(None, None, 0)
        assert GatewayActuator(client=client_for(server.url), namespace="x", release="r").route(MODEL) == f"r-{MODEL}-canary"


def test_knative_rollback_never_gives_a_starting_revision_traffic(knative, schemas):
    act, server, ctl = knative
    act.prepare(CHAMPION, CHALLENGER)
    act.set_weight(MODEL, 50)
    start = len(server.patches())
    act.rollback(MODEL)
    sent = [r.body["spec"]["predictor"] for r in server.patches()[start:]]
    # 0 % at once, then the champion's model as a new revision still at 0 %, then no percent
    assert sent == [{"canaryTrafficPercent": 0},
                    {"canaryTrafficPercent": 0, "model": {"storageUri": CHAMPION_URI}},
                    {"canaryTrafficPercent": None}]
    assert "canaryTrafficPercent" not in _predictor(server)
    assert _predictor(server)["model"]["storageUri"] == CHAMPION_URI
    assert act.state(MODEL) == TrafficState("3", None, 0)
    assert [uri for _, uri in ctl.revisions[ISVC]] == [CHAMPION_URI, CHALLENGER.storage_uri, CHAMPION_URI]
    before = len(server.patches())
    act.rollback(MODEL)  # idempotent: nothing more to send
    assert len(server.patches()) == before
    assert_every_patch_valid(server, schemas)


def test_knative_set_weight_needs_a_prepared_challenger(knative):
    act, server, _ = knative
    with pytest.raises(FissureError, match="has no challenger revision to send 10% to"):
        act.set_weight(MODEL, 10)
    assert not server.patches()


# ------------------------------------------------------------------------------ the chart's canary objects


@pytest.mark.parametrize("sets", [(), KNATIVE_SETS], ids=["standard", "knative"])
def test_canary_render_is_valid_kubernetes(tools, sets, tmp_path):
    """kubeconform -strict on the canary's objects, with the same schemas as tests/k8s."""
    docs = [d for d in render(tools, *sets)
            if d["kind"] in ("InferenceService", "HTTPRoute", "Role", "RoleBinding", "ServiceAccount")]
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([
        tools["KUBECONFORM"], "-strict", "-summary",
        "-schema-location", f"{tools['K8S_SCHEMAS']}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        "-schema-location", f"{tools['CRD_SCHEMAS']}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
        str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout
