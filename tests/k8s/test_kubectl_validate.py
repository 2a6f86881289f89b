"""kubectl-validate on everything the chart renders: the API server's own validation, offline.

kubeconform checks documents against JSON schemas. The API server does more: ObjectMeta
validation (names, label keys and values), CRD structural schemas with defaulting and pruning,
and the CRDs' CEL rules (x-kubernetes-validations; Gateway API's HTTPRoute has 32 of them).
kubectl-validate (sigs.k8s.io/kubectl-validate, built by `make k8s-tools`) runs that code
without a cluster: built-in kinds against Kubernetes' OpenAPI documents at the test cluster's
version, custom resources against the pinned upstream CRDs (`kubectl_validate_inputs.py`).
The same run is part of `make k8s-check`.

Each "caught" case below is a rendered object with one realistic mistake that kubeconform
accepts (asserted) and kubectl-validate refuses with the API server's message.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from kubectl_validate_inputs import spec_target  # noqa: E402
from test_k8s import docs, kubeconform, rendered, tools  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.timeout(3600)

# What `make k8s-check` hands kubectl-validate besides the rendered chart.
EXTRA_TARGETS = ["manifests/rendered", "manifests/kind/gateway.yaml", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "argo").glob("*.yaml"))]


def kubectl_validate(tools, *targets: str) -> tuple[int, dict[str, list[dict]]]:
    """Run it offline as `make k8s-check` does; per file, the API statuses it returned."""
    inputs = Path(tools["KUBECTL_VALIDATE_INPUTS"])
    env = dict(os.environ, KUBECONFIG=os.devnull)
    proc = subprocess.run(
        [tools["KUBECTL_VALIDATE"], "--version", "1.30", "--local-schemas", str(inputs / "schemas"),
         "--local-crds", str(inputs / "crds"), "-o", "json", *targets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"kubectl-validate gave no JSON ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.returncode, result


def failures(result: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {path: [s.get("message", "") for s in statuses if s.get("status") != "Success"]
            for path, statuses in result.items()
            if any(s.get("status") != "Success" for s in statuses)}


def test_openapi_documents_are_laid_out_as_kubectl_validate_reads_them(tools):
    assert os.access(tools["KUBECTL_VALIDATE"], os.X_OK), "make k8s-tools did not build kubectl-validate"
    assert spec_target("api__v1_openapi.json") == Path("api/v1.json")
    assert spec_target("apis__apps__v1_openapi.json") == Path("apis/apps/v1.json")
    assert spec_target("apis__apps_openapi.json") is None  # group discovery, not a schema
    assert spec_target("version_openapi.json") is None
    schemas = Path(tools["KUBECTL_VALIDATE_INPUTS"]) / "schemas"
    for needed in ("api/v1.json", "apis/apps/v1.json", "apis/networking.k8s.io/v1.json",
                   "apis/policy/v1.json", "apis/rbac.authorization.k8s.io/v1.json"):
        assert (schemas / needed).is_file(), needed
    crds = {p.name for p in (Path(tools["KUBECTL_VALIDATE_INPUTS"]) / "crds").glob("*.yaml")}
    assert {"serving.kserve.io_inferenceservices.yaml", "gateway.networking.k8s.io_httproutes.yaml",
            "argoproj.io_workflowtemplates.yaml", "monitoring.coreos.com_podmonitors.yaml"} <= crds


def test_validates_at_the_clusters_kubernetes_version_and_strictly(tools, tmp_path):
    """Pod-level resources (spec.resources) exist from Kubernetes 1.32: the local v1.34 documents
    accept them, the 1.30 documents kubectl-validate ships (used without them) do not; an unknown
    field is refused either way."""
    assert tools["KUBECTL_VALIDATE_K8S"].startswith("v1.34.")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"resources": {"limits": {"cpu": "1"}},
                    "containers": [{"name": "c", "image": "busybox"}]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    code, result = kubectl_validate(tools, str(tmp_path / "pod.yaml"))
    assert code == 0 and not failures(result), result
    old = subprocess.run([tools["KUBECTL_VALIDATE"], "--version", "1.30", str(tmp_path / "pod.yaml")],
                         env=dict(os.environ, KUBECONFIG=os.devnull), capture_output=True, text=True, timeout=300)
    assert old.returncode != 0 and "spec.resources" in old.stderr
    pod["spec"]["bogus"] = True
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    code, result = kubectl_validate(tools, str(tmp_path / "pod.yaml"))
    assert code != 0 and "spec.bogus" in json.dumps(failures(result))


def test_everything_rendered_passes(tools, rendered):
    """Every ci/ profile, manifests/rendered, the kind Gateway and argo/: every object valid."""
    targets = [str(p) for p in rendered.values()] + EXTRA_TARGETS
    code, result = kubectl_validate(tools, *targets)
    assert not failures(result), json.dumps(failures(result), indent=1)[:6000]
    assert code == 0
    checked = {str(Path(p).resolve()) for p in result}
    for target in targets:
        path = (REPO / target).resolve()
        files = [path] if path.is_file() else [p.resolve() for p in path.glob("*.yaml")]
        assert files and all(str(f) in checked for f in files), f"{target} was not validated"
    statuses = sum(len(v) for v in result.values())
    rendered_objects = sum(len(docs(p)) for p in rendered.values())
    assert statuses >= rendered_objects, "one status per object"


def _first(objs: list[dict], kind: str) -> dict:
    return next(o for o in objs if o["kind"] == kind)


def backend_timeout_longer_than_request(objs):
    route = _first(objs, "HTTPRoute")
    rule = next(r for r in route["spec"]["rules"] if r.get("timeouts", {}).get("request"))
    rule["timeouts"]["backendRequest"] = "3600s"  # longer than the rule's request timeout
    return route, "backendRequest timeout cannot be longer than request timeout"


def relative_path_prefix(objs):
    route = _first(objs, "HTTPRoute")
    route["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "v1/models"}}]
    return route, "value must be an absolute path and start with '/'"


def label_value_with_a_space(objs):
    deploy = _first(objs, "Deployment")
    deploy["metadata"]["labels"]["app.kubernetes.io/version"] = "0.2.0 beta"
    return deploy, "a valid label must be an empty string or consist of alphanumeric characters"


def uppercase_resource_name(objs):
    isvc = _first(objs, "InferenceService")
    isvc["metadata"]["name"] = "Fissure-Crack"
    return isvc, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"


@pytest.mark.parametrize("mistake", [backend_timeout_longer_than_request, relative_path_prefix,
                                     label_value_with_a_space, uppercase_resource_name],
                         ids=lambda f: f.__name__)
def test_catches_what_kubeconform_misses(tools, rendered, tmp_path, mistake):
    objs = copy.deepcopy(docs(rendered["default"]))
    obj, message = mistake(objs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(obj, sort_keys=False))
    # kubeconform's strict schemas accept it...
    accepted = kubeconform(tools, str(bad), ok=False)
    assert accepted.returncode == 0 and "Valid: 1," in accepted.stdout, accepted.stdout
    # ...the API server's validation does not.
    code, result = kubectl_validate(tools, str(bad))
    assert code != 0
    found = failures(result)
    assert len(found) == 1, result
    (messages,) = found.values()
    assert any(message in m for m in messages), messages
    # And the untouched object passes, so the refusal is the mistake's.
    index = next(i for i, o in enumerate(objs) if o is obj)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(docs(rendered["default"])[index], sort_keys=False))
    code, result = kubectl_validate(tools, str(good))
    assert code == 0 and not failures(result), result
