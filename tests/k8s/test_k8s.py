"""Offline checks of the Kubernetes side: the Helm chart, the plain manifests, the Argo
workflows and the Dockerfiles, with the real tools (helm, helm-unittest, kubeconform, argo,
hadolint) that `make k8s-tools` builds from pinned sources into ~/.cache/fissure.

The same checks run outside pytest with `make k8s-check`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fissure"
PROFILES = sorted((CHART / "ci").glob("*.yaml"))
DOCKERFILES = ["serving/Dockerfile", "training/Dockerfile", "Dockerfile"]

# The first run builds the tools with Go (minutes); later runs find them cached.
pytestmark = pytest.mark.timeout(3600)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crd2jsonschema  # noqa: E402


def _make(*targets: str) -> str:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    proc = subprocess.run(
        ["make", "--no-print-directory", "-s", *targets],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`make {' '.join(targets)}` failed (it builds helm, helm-unittest, kubeconform and "
            f"argo with Go from the module proxy, and converts the schemas; it needs Go (1.26 tested) "
            f"and network access the first time):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    _make("k8s-tools", "k8s-schemas")
    paths = dict(line.split("=", 1) for line in _make("k8s-paths").splitlines() if "=" in line)
    for key in ("HELM", "HELM_UNITTEST", "KUBECONFORM", "ARGO", "HADOLINT"):
        assert os.access(paths[key], os.X_OK), f"{key} missing at {paths[key]} after make k8s-tools"
    return paths


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


# Render for a cluster that has the Prometheus operator (its API decides whether the chart's
# PodMonitors and PrometheusRule are rendered), as `make manifests` does.
API_VERSIONS = ["--api-versions", "monitoring.coreos.com/v1"]


def template_cmd(tools, *extra: str) -> list[str]:
    return [tools["HELM"], "template", "fissure", str(CHART), "--namespace", "fissure",
            "--kube-version", tools["K8S_SCHEMA_VERSION"], *API_VERSIONS, *extra]


def profile_id(path: Path | None) -> str:
    return "default" if path is None else path.stem


@pytest.fixture(scope="session")
def rendered(tools, tmp_path_factory) -> dict[str, Path]:
    """helm template output for the default values and every ci/ profile (tests included)."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for prof in [None, *PROFILES]:
        extra = [] if prof is None else ["-f", str(prof)]
        path = out / f"{profile_id(prof)}.yaml"
        path.write_text(run(template_cmd(tools, *extra)).stdout)
        files[profile_id(prof)] = path
    return files


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubeconform(tools, *targets: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run([
        tools["KUBECONFORM"], "-strict", "-summary", "-ignore-filename-pattern", r"(^|/)values-[^/]*\.yaml$",
        "-schema-location", f"{tools['K8S_SCHEMAS']}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        "-schema-location", f"{tools['CRD_SCHEMAS']}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
        "-schema-location", "tests/k8s/schemas/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
        *targets,
    ], ok=ok)


# ------------------------------------------------------------------------------ helm


def test_there_are_ci_profiles_for_each_mode():
    names = {p.stem for p in PROFILES}
    assert {"knative-values", "standard-values", "gpu-values", "external-values"} <= names


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_helm_lint_strict(tools, profile):
    extra = [] if profile is None else ["-f", str(profile)]
    proc = run([tools["HELM"], "lint", "--strict", str(CHART), "--kube-version",
                tools["K8S_SCHEMA_VERSION"], *extra])
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_every_part(rendered):
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs(rendered["default"])]
    assert ("ServingRuntime", "fissure-torchserve") in kinds
    assert ("InferenceService", "fissure-crack-classifier") in kinds
    assert ("InferenceService", "fissure-crack-segmenter") in kinds
    assert ("Deployment", "fissure-mlflow") in kinds
    assert ("StatefulSet", "fissure-postgresql") in kinds
    assert ("StatefulSet", "fissure-minio") in kinds
    for kind in ("PodMonitor", "NetworkPolicy", "PodDisruptionBudget", "HTTPRoute", "GRPCRoute", "Pod"):
        assert kind in {k for k, _ in kinds}, f"no {kind} in the default render"
    for kind in ("Deployment", "Service", "HTTPRoute", "NetworkPolicy", "PodDisruptionBudget", "PodMonitor"):
        assert (kind, "fissure-api") in kinds, f"no {kind} fissure-api in the default render"


def test_profiles_switch_modes(rendered):
    isvcs = {p: [d for d in docs(f) if d["kind"] == "InferenceService"] for p, f in rendered.items()}
    mode = lambda d: d["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]  # noqa: E731
    assert {mode(d) for d in isvcs["default"]} == {"Standard"}
    assert {mode(d) for d in isvcs["knative-values"]} == {"Knative"}
    canary = {d["metadata"]["name"]: d["spec"]["predictor"].get("canaryTrafficPercent") for d in isvcs["knative-values"]}
    assert canary == {"fissure-crack-classifier": 10, "fissure-crack-segmenter": None}
    gpu = {d["metadata"]["name"]: d["spec"]["predictor"]["model"]["resources"]["limits"].get("nvidia.com/gpu")
           for d in isvcs["gpu-values"]}
    assert gpu == {"fissure-crack-classifier": None, "fissure-crack-segmenter": 1}
    kinds = {d["kind"] for d in docs(rendered["external-values"])}
    assert "StatefulSet" not in kinds and "PodMonitor" not in kinds
    assert "Ingress" in {d["kind"] for d in docs(rendered["standard-values"])}


BAD_VALUES = [
    ("models.crack-classifier.minReplicas=-1", "minimum"),
    ("kserve.deploymentMode=Serverless", "deploymentMode"),
    ("replicas=3", "additional properties 'replicas' not allowed"),
    ("route.type=loadbalancer", "route/type"),
    ("models.crack-classifier.storageUri=/local/path", "storageUri"),
    ("mlflow.pipPackages[0]=psycopg2-binary", "pipPackages"),
    ("networkPolicy.enabled=maybe", "networkPolicy/enabled"),
    ("serving.runtime=triton", "serving/runtime"),
    ("api.blobs.url=/var/blobs", "api/blobs/url"),
    ("api.database.name=Fissure-DB", "api/database/name"),
    ("api.route.host=API_HOST", "api/route/host"),
    ("monitoring.podMonitors.enabled=maybe", "monitoring/podMonitors/enabled"),
]


@pytest.mark.parametrize("setting,expect", BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_values_schema_rejects_bad_values(tools, setting, expect):
    proc = run(template_cmd(tools, "--set", setting), ok=False)
    assert proc.returncode != 0, f"--set {setting} rendered, but values.schema.json should refuse it"
    assert "don't meet the specifications of the schema" in proc.stderr
    assert expect in proc.stderr, proc.stderr


def test_values_schema_rejects_wrong_types(tools):
    proc = run(template_cmd(tools, "--set-string", "models.crack-segmenter.gpu=one"), ok=False)
    assert proc.returncode != 0 and "gpu" in proc.stderr


TEMPLATE_FAILURES = [
    (["--set", "models.crack-classifier.canaryTrafficPercent=10"], "canary rollouts need kserve.deploymentMode=Knative"),
    (["--set", "postgresql.auth.existingSecret="], "postgresql.auth.existingSecret is required"),
    (["--set", "minio.auth.existingSecret="], "minio.auth.existingSecret is required"),
    (["--set", "kserve.deploymentMode=Knative", "--set", "models.crack-classifier.scaleMetric=concurrency",
      "--set", "models.crack-segmenter.scaleMetric=concurrency"], "route.type must be none in Knative mode"),
    (["--set", "route.timeoutSeconds=45"],
     "route.timeoutSeconds (45) must be greater than servingRuntime.backendTimeoutSeconds (50)"),
    (["--set", "servingRuntime.shutdown.terminationGracePeriodSeconds=12"],
     "servingRuntime.shutdown.terminationGracePeriodSeconds (12) must be greater than "
     "preStopSleepSeconds (5) + drainSeconds (10)"),
    (["--set", "api.database.name=mlflow"], "api.database.name (mlflow) is MLflow's database"),
    (["--set", "api.blobs.url=s3://nowhere/blobs"], 'api.blobs.url is in bucket "nowhere", which is not in minio.buckets'),
]


@pytest.mark.parametrize("args,message", TEMPLATE_FAILURES, ids=[m.split()[0] for _, m in TEMPLATE_FAILURES])
def test_templates_fail_with_clear_messages(tools, args, message):
    proc = run(template_cmd(tools, *args), ok=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _schema_objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            yield path, node
        for key, sub in node.items():
            yield from _schema_objects(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _schema_objects(sub, f"{path}[{i}]")


def test_values_schema_is_closed_and_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = [p for p, o in _schema_objects(schema) if o.get("additionalProperties") is not False]
    assert not open_objects, f"schema objects that accept unknown keys: {open_objects}"

    def walk(values, sch, path):
        for key, value in values.items():
            props = sch.get("properties", {})
            sub = props.get(key, sch.get("additionalProperties") if isinstance(sch.get("additionalProperties"), dict) else None)
            assert sub is not None, f"{path}{key} is not described in values.schema.json"
            assert "description" in sub or "type" in sub or "anyOf" in sub, f"{path}{key} has no type"
            if isinstance(value, dict) and sub.get("type") == "object" and ("properties" in sub or isinstance(sub.get("additionalProperties"), dict)):
                walk(value, sub, f"{path}{key}.")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


# ------------------------------------------------------------------------------ serving


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _kserve_inference_methods() -> tuple[str, list[str]]:
    """The installed kserve's GRPCInferenceService and its methods, read from its generated
    descriptor in a child process: loaded here, its `inference.*` symbols would clash with
    tritonclient's in this process's protobuf pool (the serving tests use tritonclient)."""
    code = """
import importlib.util, json, pathlib
pkg = pathlib.Path(importlib.util.find_spec("kserve").origin).parent
spec = importlib.util.spec_from_file_location("_kserve_pb2", pkg / "protocol" / "grpc" / "grpc_predict_v2_pb2.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
print(json.dumps([service.full_name, [m.name for m in service.methods]]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    service, methods = json.loads(out.stdout)
    return service, methods


def test_grpc_routes_carry_exactly_the_inference_methods(rendered):
    service, methods = _kserve_inference_methods()
    inference = [m for m in methods if not m.startswith("Repository")]
    assert {"RepositoryModelLoad", "RepositoryModelUnload"} <= set(methods)  # what is kept out
    for prof in ("default", "external-values"):
        routes = [d for d in docs(rendered[prof]) if d["kind"] == "GRPCRoute"]
        assert routes, prof
        for route in routes:
            (rule,) = route["spec"]["rules"]
            assert [(m["method"]["service"], m["method"]["method"]) for m in rule["matches"]] == \
                [(service, m) for m in inference], route["metadata"]["name"]
    ingress = next(d for d in docs(rendered["standard-values"])
                   if d["kind"] == "Ingress" and d["metadata"]["name"].endswith("-grpc"))
    for rule in ingress["spec"]["rules"]:
        assert [p["path"] for p in rule["http"]["paths"]] == [f"/{service}/{m}" for m in inference]


def test_rest_routes_expose_only_the_model_paths(rendered):
    route = next(d for d in docs(rendered["default"])
                 if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == "fissure-rest")
    paths = [m["path"]["value"] for r in route["spec"]["rules"] for m in r["matches"]]
    assert all(re.fullmatch(r"/v1/models/[a-z-]+(:predict|:explain)?|/v2/models/[a-z-]+", p) for p in paths), paths
    assert "/v1/models/crack-classifier:predict" in paths  # a PathPrefix would not match it


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_serving_containers_listen_probe_and_shut_down_in_order(rendered, profile):
    objs = docs(rendered[profile_id(profile)])
    runtimes = {d["metadata"]["name"]: d for d in objs if d["kind"] == "ServingRuntime"}
    assert set(runtimes) == {"fissure-torchserve", "fissure-inprocess"}
    isvcs = [d for d in objs if d["kind"] == "InferenceService"]
    knative = isvcs[0]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    for name, runtime in runtimes.items():
        (c,) = runtime["spec"]["containers"]
        env = _env(c)
        assert env["FISSURE_HOST"] == "0.0.0.0", name
        assert env["FISSURE_RUNTIME"] == name.removeprefix("fissure-"), name
        start = c["startupProbe"]
        assert start["periodSeconds"] * start["failureThreshold"] >= 300, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}, name
        ready = c["readinessProbe"]
        assert ready.get("httpGet") == {"path": "/v2/health/ready", "port": 8080} or \
            "/v2/health/ready" in ready["exec"]["command"][-1], name
        if knative:  # Knative forbids lifecycle hooks and the pod's grace period
            assert "lifecycle" not in c
            assert all("terminationGracePeriodSeconds" not in d["spec"]["predictor"] for d in isvcs)
            continue
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        for d in isvcs:
            grace = d["spec"]["predictor"]["terminationGracePeriodSeconds"]
            assert grace > pre_stop + float(env["FISSURE_DRAIN_SECONDS"]), (name, d["metadata"]["name"])


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_route_timeout_outlasts_the_backend_timeout(rendered, profile):
    objs = docs(rendered[profile_id(profile)])
    runtime = next(d for d in objs
                   if d["kind"] == "ServingRuntime" and d["metadata"]["name"] == "fissure-torchserve")
    backend = float(_env(runtime["spec"]["containers"][0])["FISSURE_BACKEND_TIMEOUT"])
    for d in objs:
        if d["kind"] == "InferenceService":
            assert d["spec"]["predictor"]["timeout"] > backend
        elif d["kind"] == "HTTPRoute":
            for rule in d["spec"]["rules"]:
                if rule.get("backendRefs"):  # a rule without one answers 404 at the gateway
                    assert int(rule["timeouts"]["request"].removesuffix("s")) > backend
        elif d["kind"] == "Ingress":
            assert int(d["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > backend


def test_runtime_switch_moves_every_inference_service(tools):
    out = run(template_cmd(tools, "--set", "serving.runtime=inprocess")).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    isvcs = [d for d in objs if d["kind"] == "InferenceService"]
    assert {d["spec"]["predictor"]["model"]["runtime"] for d in isvcs} == {"fissure-inprocess"}
    assert all(p["containerPort"] != 8082 for d in isvcs for p in d["spec"]["predictor"]["model"]["ports"])
    scraped = {e["portNumber"] for d in objs if d["kind"] == "PodMonitor"
               and "serving.kserve.io/inferenceservice" in {e["key"] for e in d["spec"]["selector"].get("matchExpressions", [])}
               for e in d["spec"]["podMetricsEndpoints"]}
    assert scraped == {8080}


def test_gpu_models_tell_torchserve_their_gpus(rendered):
    env = {d["metadata"]["labels"]["fissure.dev/model"]: _env(d["spec"]["predictor"]["model"])
           for d in docs(rendered["gpu-values"]) if d["kind"] == "InferenceService"}
    assert env["crack-segmenter"]["TS_NUMBER_OF_GPU"] == "1"
    assert "TS_NUMBER_OF_GPU" not in env["crack-classifier"]


# ------------------------------------------------------------------------------ the API


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_api_is_wired_to_what_the_release_has(rendered, profile):
    """In every profile that deploys it: `fissure api` on 8000 probed on /ping, an inference
    URL that names a predictor Service of each model, a database URL that holds no password,
    S3 credentials from Secrets, and a NetworkPolicy that lets it reach them."""
    objs = docs(rendered[profile_id(profile)])
    deployments = [d for d in objs if d["kind"] == "Deployment" and d["metadata"]["name"] == "fissure-api"]
    if profile is not None and profile.stem == "knative-grpc-values":
        assert not deployments  # no REST to call there
        return
    (dep,) = deployments
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    env = {e["name"]: e for e in c["env"]}
    isvcs = [d for d in objs if d["kind"] == "InferenceService"]
    services = {f"{d['metadata']['name']}-predictor" for d in isvcs}  # the Services KServe creates
    url = env["FISSURE_INFERENCE_URL"]["value"]
    for model in {d["metadata"]["labels"]["fissure.dev/model"] for d in isvcs}:  # {model}: the served name
        host = url.format(model=model).removeprefix("http://").split(".")[0]
        assert host in services, (url, model)
    db = env["FISSURE_DATABASE_URL"]
    if "value" in db:
        userinfo = db["value"].split("://", 1)[1].split("@", 1)[0]
        assert db["value"].startswith("postgresql+psycopg://") and ":" not in userinfo, db
        assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
    else:
        assert "secretKeyRef" in db["valueFrom"]
    assert env["FISSURE_BLOB_URL"]["value"].startswith("s3://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[key]["valueFrom"], key
    assert env["FISSURE_API_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    (svc,) = [d for d in objs if d["kind"] == "Service" and d["metadata"]["name"] == "fissure-api"]
    assert svc["spec"]["ports"][0]["port"] == 8000
    (policy,) = [d for d in objs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "fissure-api"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 53 in egress_ports and (8080 in egress_ports or 8012 in egress_ports), egress_ports
    blobs_open = 9000 in egress_ports or 443 in egress_ports
    assert blobs_open and (5432 in egress_ports), egress_ports


# ------------------------------------------------------------------------------ security


def _pod_specs(doc):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield doc["spec"]
    elif kind == "InferenceService":
        pred = doc["spec"]["predictor"]
        yield {"securityContext": pred["securityContext"], "containers": []}


def _containers(doc):
    if doc["kind"] == "ServingRuntime":
        yield from doc["spec"]["containers"]
    for spec in _pod_specs(doc):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_every_pod_and_container_is_locked_down(rendered, profile):
    for doc in docs(rendered[profile_id(profile)]):
        for spec in _pod_specs(doc):
            sc = spec["securityContext"]
            assert sc["runAsNonRoot"] is True, doc["metadata"]["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", doc["metadata"]["name"]
        for c in _containers(doc):
            sc = c["securityContext"]
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c.get("resources"), f"{where} has no resources"


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=profile_id)
def test_no_secret_values_and_no_management_port(rendered, profile):
    text = json.dumps(docs(rendered[profile_id(profile)]))  # the objects, not the comments
    for doc in docs(rendered[profile_id(profile)]):
        assert doc["kind"] != "Secret", "the chart must reference Secrets, never create them"
        for c in _containers(doc):
            for env in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN", env["name"]):
                    assert "valueFrom" in env and "value" not in env, f"{env['name']} is inlined"
    # TorchServe's management (8085) and internal inference (8083) ports stay on loopback
    assert not re.search(r"\b808[35]\b", text)


# ------------------------------------------------------------------------------ other tools


def test_helm_unittest(tools):
    proc = run([tools["HELM_UNITTEST"], str(CHART)])
    assert re.search(r"Tests:\s+\d+ passed", proc.stdout), proc.stdout
    assert "failed" not in proc.stdout.split("Tests:")[1].splitlines()[0]


def test_kubeconform_strict_on_everything(tools, rendered):
    targets = [str(p) for p in rendered.values()] + ["manifests", "argo"]
    proc = kubeconform(tools, *targets)
    summary = proc.stdout.strip().splitlines()[-1]
    match = re.search(r"(\d+) resources found.*Valid: (\d+), Invalid: (\d+), Errors: (\d+), Skipped: (\d+)", summary)
    assert match, proc.stdout
    found, valid, invalid, errors, skipped = map(int, match.groups())
    assert (invalid, errors, skipped) == (0, 0, 0), proc.stdout
    assert found == valid and found > 100, summary


@pytest.mark.parametrize("kind,bad", [
    ("InferenceService", {"spec": {"predictor": {"minReplica": 1}}}),
    ("ServingRuntime", {"spec": {"protocolVersion": ["v2"]}}),
    ("PodMonitor", {"spec": {"podMetricsEndpoints": [{"portNumber": "8082"}]}}),
    ("HTTPRoute", {"spec": {"hostname": "x"}}),
    ("GRPCRoute", {"spec": {"rules": [{"matches": [{"method": {"type": "Prefix", "service": "inference"}}]}]}}),
    ("NetworkPolicy", {"spec": {"ingres": []}}),
])
def test_kubeconform_catches_broken_resources(tools, rendered, tmp_path, kind, bad):
    doc = copy.deepcopy(next(d for d in docs(rendered["default"]) if d["kind"] == kind))

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(doc, bad)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    proc = kubeconform(tools, str(tmp_path / "bad.yaml"), ok=False)
    assert proc.returncode != 0 and "Invalid: 1" in proc.stdout, proc.stdout


def test_argo_lint_offline(tools):
    proc = run([tools["ARGO"], "lint", "--offline", "argo/"])
    assert "no linting errors found" in (proc.stdout + proc.stderr).lower()


def test_argo_train_template_shape():
    wt = yaml.safe_load((REPO / "argo" / "train-pipeline.yaml").read_text())
    assert wt["kind"] == "WorkflowTemplate" and wt["metadata"]["name"] == "fissure-train"
    params = {p["name"] for p in wt["spec"]["arguments"]["parameters"]}
    assert {"revision", "mlflow-tracking-uri", "dvc-remote", "config-map"} <= params
    script = wt["spec"]["templates"][0]["container"]["args"][0]
    assert script.index("dvc pull || true") < script.index("dvc repro") < script.index("dvc push")


def test_hadolint_dockerfiles(tools):
    run([tools["HADOLINT"], *DOCKERFILES])


def test_rendered_manifests_are_up_to_date(tools):
    current = (REPO / "manifests" / "rendered" / "fissure.yaml").read_text()
    fresh = tools["RENDERED_HEADER"] + "\n" + run(template_cmd(tools, "--skip-tests")).stdout
    assert current == fresh, "manifests/rendered/fissure.yaml is stale: run `make manifests`"


def test_k8s_make_targets_have_help():
    text = (REPO / "mk" / "k8s.mk").read_text()
    targets = re.findall(r"^([a-z0-9-]+):(?!=)", text, flags=re.M)
    for t in ("k8s-tools", "k8s-check", "manifests", "kind-up", "images", "deploy", "e2e-kind", "kind-down"):
        assert t in targets, f"mk/k8s.mk has no {t} target"
    for t in targets:
        assert re.search(rf"^{t}:.*## ", text, flags=re.M), f"{t} has no ## help"


# ------------------------------------------------------------------------------ converter


def test_crd_conversion_is_strict_and_keeps_open_fields(tmp_path):
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.dev",
            "names": {"kind": "Widget"},
            "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "nullable": True},
                        "port": {"x-kubernetes-int-or-string": True},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                 "properties": {"a": {"type": "string"}}},
                    }},
                },
            }}}],
        },
    }
    (path,) = crd2jsonschema.convert_crd(crd, tmp_path)
    assert path.name == "widget_v1.json"
    schema = json.loads(path.read_text())
    spec = schema["properties"]["spec"]
    assert schema["additionalProperties"] is False and spec["additionalProperties"] is False
    assert spec["properties"]["size"]["type"] == ["integer", "null"]
    assert spec["properties"]["port"]["oneOf"] == [{"type": "string"}, {"type": "integer"}]
    assert "additionalProperties" not in spec["properties"]["free"]
    assert schema["properties"]["apiVersion"]["enum"] == ["example.dev/v1"]
