"""The Argo workflows of argo/ (hera source, exported YAML, the chart's copy) and the submit call.

Checked offline: the YAML is what argo/fissure_workflows.py exports; it is valid against the
Argo Workflows v4.1.2 CRD schemas (../shared/crds), hera's models and `argo lint --offline`
(the argo CLI mk/k8s.mk builds); no workflow parameter is pasted into script text; every
container is restricted; the chart renders the same objects with the release's names. The
Workflow that `fissure retrain --argo` submits is checked against the CRD schema here, and created
on a real kube-apiserver with the Argo CRDs in test_submit_cluster.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
CHART = REPO / "charts" / "fissure"
CRDS = REPO.parent / "shared" / "crds" / "argo-workflows-v4.1.2"

sys.path.insert(0, str(ARGO))
sys.path.insert(0, str(REPO / "tests" / "k8s"))
import crd2jsonschema  # noqa: E402
import fissure_workflows as fw  # noqa: E402

from fissure.errors import FissureError, Unavailable, UsageError  # noqa: E402
from fissure.promotion import argo as submit  # noqa: E402


def _load(path: Path, name: str):
    """tests/api/conftest.py as a module of its own: its MinIO fixture, reused here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


minio = _load(REPO / "tests" / "api" / "conftest.py", "_argo_api_conftest").minio

pytestmark = pytest.mark.timeout(1800)

FILES = sorted(p for p in ARGO.glob("*.yaml") if p.name != "rbac.yaml")  # the Argo objects
SCRIPT_KINDS = ("container", "script")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def templates(doc: dict) -> list[dict]:
    spec = doc["spec"].get("workflowSpec", doc["spec"])
    return spec.get("templates", [])


def spec_of(doc: dict) -> dict:
    return doc["spec"].get("workflowSpec", doc["spec"])


# ------------------------------------------------------------------------------ tools


def _make(*targets: str) -> str:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    proc = subprocess.run(["make", "--no-print-directory", "-s", *targets], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"`make {' '.join(targets)}` failed (it builds helm and argo with Go the first "
                    f"time):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    paths = dict(line.split("=", 1) for line in _make("k8s-paths").splitlines() if "=" in line)
    if not all(os.access(paths[k], os.X_OK) for k in ("HELM", "ARGO")):
        _make("k8s-tools")
    return paths


def helm_template(tools, *args: str, release: str = "fissure", namespace: str = "fissure") -> list[dict]:
    proc = subprocess.run([tools["HELM"], "template", release, str(CHART), "--namespace", namespace,
                           "--kube-version", "1.33.0", "--show-only", "templates/argo-workflows.yaml",
                           "--set", "argo.enabled=true", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory) -> dict[str, dict]:
    """kind -> JSON schema, converted (strict) from the Argo v4.1.2 CRDs as tests/k8s does."""
    assert CRDS.is_dir(), f"{CRDS} is missing (the Argo Workflows v4.1.2 CRDs in ../shared/crds)"
    out = tmp_path_factory.mktemp("argo-schemas")
    found = {}
    for crd in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(crd.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                for path in crd2jsonschema.convert_crd(doc, out):
                    found[doc["spec"]["names"]["kind"]] = json.loads(path.read_text())
    assert {"Workflow", "WorkflowTemplate", "CronWorkflow"} <= set(found)
    return found


def schema_errors(schemas, doc: dict) -> list[str]:
    schema = schemas[doc["kind"]]
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


# ------------------------------------------------------------------------------ in sync


def test_the_committed_yaml_is_what_the_python_exports():
    files = fw.rendered()
    for path, text in files.items():
        assert path.exists(), f"{path.relative_to(REPO)} missing: run `make workflows`"
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run `make workflows`"
    committed = set(ARGO.glob("*.yaml")) | set((CHART / "files" / "argo").glob("*.yaml"))
    assert committed == set(files), f"YAML not produced by argo/fissure_workflows.py: {committed - set(files)}"
    assert {p.stem for p in FILES} == {"train-pipeline", "fissure-retrain", "fissure-retrain-weekly",
                                       "fissure-retrain-feedback"}
    assert (ARGO / "rbac.yaml") in files


def test_make_workflows_check_finds_a_stale_file(tmp_path, monkeypatch, capsys):
    assert subprocess.run(["make", "-s", "workflows-check"], cwd=REPO, capture_output=True).returncode == 0
    # the same check on a copy (the shared checkout is never edited)
    monkeypatch.setattr(fw, "REPO", tmp_path)
    monkeypatch.setattr(fw, "PLAIN_DIR", tmp_path / "argo")
    monkeypatch.setattr(fw, "CHART_DIR", tmp_path / "chart")
    assert fw.main([]) == 0 and fw.main(["--check"]) == 0
    path = tmp_path / "argo" / "fissure-retrain.yaml"
    path.write_text(path.read_text() + "# edited by hand\n")
    capsys.readouterr()
    assert fw.main(["--check"]) == 1
    assert "argo/fissure-retrain.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------------ validity


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_valid_against_the_argo_v4_crd_schema(schemas, path):
    doc = load(path)
    assert schema_errors(schemas, doc) == []


def test_the_crd_schema_catches_mistakes(schemas):
    doc = load(ARGO / "fissure-retrain.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["templates"][0]["container"]["imagePulPolicy"] = "Always"
    assert any("imagePulPolicy" in e for e in schema_errors(schemas, typo))
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["activeDeadlineSeconds"] = "a day"
    assert schema_errors(schemas, wrong_type)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_hera_models_read_and_write_them_unchanged(path):
    from hera.workflows import CronWorkflow, WorkflowTemplate
    from hera.workflows import models as m

    doc = load(path)
    model = {"WorkflowTemplate": m.WorkflowTemplate, "CronWorkflow": m.CronWorkflow}[doc["kind"]]
    model.model_validate(doc)
    cls = {"WorkflowTemplate": WorkflowTemplate, "CronWorkflow": CronWorkflow}[doc["kind"]]
    assert cls.from_dict(doc).to_dict() == doc


def test_argo_lint_offline(tools, tmp_path):
    proc = subprocess.run([tools["ARGO"], "lint", "--offline", "argo/"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "no linting errors found" in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    # the chart's rendering for another release and namespace, too
    docs = helm_template(tools, release="lab", namespace="ml")
    (tmp_path / "chart.yaml").write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([tools["ARGO"], "lint", "--offline", str(tmp_path / "chart.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_argo_lint_catches_a_broken_template(tools, tmp_path):
    doc = load(ARGO / "fissure-retrain.yaml")
    doc["spec"]["templates"][-2]["dag"]["tasks"][1]["template"] = "no-such-template"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    proc = subprocess.run([tools["ARGO"], "lint", "--offline", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert proc.returncode != 0 and "no-such-template" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ rules

PARAM_REF = re.compile(r"\{\{\s*=?[^}]*\}\}")


def script_texts(doc: dict) -> list[tuple[str, str]]:
    """(template, text) for every piece of text a shell or interpreter runs."""
    out = []
    for t in templates(doc):
        for kind in SCRIPT_KINDS:
            c = t.get(kind)
            if c:
                out += [(t["name"], s) for s in [*c.get("command", []), *c.get("args", []), c.get("source", "")] if s]
    return out


def interpolated_scripts(doc: dict) -> list[str]:
    return [f"{name}: {PARAM_REF.search(text).group(0)}" for name, text in script_texts(doc) if PARAM_REF.search(text)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_parameter_is_pasted_into_script_text(path):
    doc = load(path)
    assert interpolated_scripts(doc) == []
    # ... they arrive as environment variables that the scripts read
    for t in templates(doc):
        c = t.get("container")
        if not c:
            continue
        script = "\n".join(c["args"])
        for env in c.get("env", []):
            if PARAM_REF.search(env.get("value", "")):
                assert f"${env['name']}" in script or f"${{{env['name']}" in script or \
                    f"environ[\"{env['name']}\"]" in script, f"{t['name']}: {env['name']} is set but never read"


def test_the_interpolation_check_can_fail():
    doc = load(ARGO / "fissure-retrain.yaml")
    doc["spec"]["templates"][0]["container"]["args"][0] += 'echo "{{workflow.parameters.revision}}"\n'
    assert interpolated_scripts(doc) == ["ingest: {{workflow.parameters.revision}}"]
    old = load(ARGO / "train-pipeline.yaml")  # its first, hand-written form pasted them into the script
    old["spec"]["templates"][0]["container"]["args"] = ['remote="{{workflow.parameters.dvc-remote}}"']
    assert interpolated_scripts(old)


def _restricted(sc: dict) -> bool:
    return (sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False
            and sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities", {}).get("drop") == ["ALL"]
            and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault")


@pytest.mark.parametrize("path", [p for p in FILES if "retrain-" not in p.stem], ids=lambda p: p.stem)
def test_every_container_runs_restricted(path):
    spec = spec_of(load(path))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    containers = [t["container"] for t in templates(load(path)) if "container" in t]
    assert containers and all(_restricted(c["securityContext"]) and c.get("resources") for c in containers)
    assert not any("script" in t or "resource" in t or "sidecars" in t for t in templates(load(path)))
    # Argo's own containers in each pod: init (emissary, artifacts) and wait (outputs)
    patch = json.loads(spec["podSpecPatch"])
    assert [c["name"] for c in patch["initContainers"]] == ["init"] and _restricted(patch["initContainers"][0]["securityContext"])
    assert [c["name"] for c in patch["containers"]] == ["wait"] and _restricted(patch["containers"][0]["securityContext"])


def test_the_repository_is_fixed_by_the_chart(tools):
    for path in FILES:
        doc = load(path)
        names = {p["name"] for p in spec_of(doc).get("arguments", {}).get("parameters", [])}
        assert not names & {"repo", "repository", "image", "s3-secret"}, path.name
        for t in templates(doc):
            for art in t.get("inputs", {}).get("artifacts", []):
                assert art["git"]["repo"] == "https://github.com/fissure/fissure.git"
    docs = helm_template(tools, "--set", "argo.repo=https://git.example.org/team/fissure.git")
    repos = [a["git"]["repo"] for d in docs for t in templates(d) for a in t.get("inputs", {}).get("artifacts", [])]
    assert repos and set(repos) == {"https://git.example.org/team/fissure.git"}


# ------------------------------------------------------------------------------ the retraining flow


def test_retrain_runs_ingest_train_then_gate_package_promote_per_model():
    doc = load(ARGO / "fissure-retrain.yaml")
    spec = doc["spec"]
    by = {t["name"]: t for t in spec["templates"]}
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert params["actuator"]["value"] == "kserve-gateway" and "kserve-knative" in params["actuator"]["enum"]
    assert json.loads(params["models"]["value"]) == ["crack-classifier", "crack-segmenter"]
    assert spec["entrypoint"] == "retrain" and spec["synchronization"]["mutexes"] == [{"name": "fissure-retrain"}]

    main = {t["name"]: t for t in by["retrain"]["dag"]["tasks"]}
    assert main["train"]["depends"] == "ingest" and main["release"]["depends"] == "train"
    due = "{{tasks.ingest.outputs.parameters.due}} == true"
    assert main["train"]["when"] == due and main["release"]["when"] == due  # skipped, not failed
    assert main["release"]["withParam"] == "{{workflow.parameters.models}}"

    ingest = "\n".join(by["ingest"]["container"]["args"])
    assert ingest.index("dvc pull") < ingest.index("fissure feedback export --out data/feedback")
    train = "\n".join(by["train"]["container"]["args"])
    assert train.index("dvc remote add") < train.index("dvc repro") < train.index("dvc push")

    release = {t["name"]: t for t in by["release-model"]["dag"]["tasks"]}
    passed = "{{tasks.gate.outputs.parameters.decision}} == passed"
    assert release["package"]["depends"] == "gate" and release["package"]["when"] == passed
    assert release["promote"]["depends"] == "package" and release["promote"]["when"].startswith(passed)
    gate_outputs = {p["name"] for p in by["gate"]["outputs"]["parameters"]}
    assert {"decision", "numbers", "challenger-version", "reasons"} <= gate_outputs
    assert 'fissure gate --model "$MODEL" --out' in by["gate"]["container"]["args"][0]
    assert 'fissure package --model "models:/$MODEL/$VERSION"' in by["package"]["container"]["args"][0]
    assert '--actuator "$ACTUATOR"' in by["promote"]["container"]["args"][0]

    # the exit handler rolls back what is in flight, for each model, unless the run succeeded or
    # promoted nothing (promote=false starts no canary); a failure is recorded either way
    assert spec["onExit"] == "abort-canaries"
    (group,) = by["abort-canaries"]["steps"]
    steps = {s["name"]: s for s in group}
    assert steps["abort"]["when"] == "{{workflow.status}} != Succeeded && {{workflow.parameters.promote}} == true"
    assert steps["record-failure"]["when"] == "{{workflow.status}} != Succeeded"
    assert steps["abort"]["withParam"] == "{{workflow.parameters.models}}"
    assert "fissure promote" in by["abort"]["container"]["args"][0] and "--abort" in by["abort"]["container"]["args"][0]
    # the run's end is recorded in the API: succeeded at the end of the DAG, failed from the exit handler
    assert steps["record-failure"]["arguments"]["parameters"] == [{"name": "result", "value": "failed"}]
    assert main["record"]["depends"] == "release" and main["record"]["when"] == due
    assert main["record"]["arguments"]["parameters"] == [{"name": "result", "value": "succeeded"}]
    # the exit handler's steps do not need the checkout, which a failed ingest never made
    assert by["abort"]["container"]["workingDir"] == by["record"]["container"]["workingDir"] == "/tmp"


@pytest.mark.parametrize("stem,min_feedback", [("fissure-retrain-weekly", "0"), ("fissure-retrain-feedback", "50")])
def test_cron_workflows_start_the_template_one_at_a_time(stem, min_feedback):
    doc = load(ARGO / f"{stem}.yaml")
    assert doc["kind"] == "CronWorkflow" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    wf = doc["spec"]["workflowSpec"]
    assert wf["workflowTemplateRef"] == {"name": "fissure-retrain"}
    assert wf["arguments"]["parameters"] == [{"name": "min-feedback", "value": min_feedback}]


def _fake_fissure(tmp_path: Path, decision: dict | None, rc: int) -> dict[str, str]:
    """A `fissure` on PATH that writes a gate decision to --out and exits rc (stands in for the
    gate's models and MLflow; the script's own handling of its result is what runs for real)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "decision.json").write_text(json.dumps(decision) if decision else "")
    fake = bin_dir / "fissure"
    fake.write_text("#!/bin/bash\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && cp \"$DECISION\" \"$2\"; shift; done\n"
                    f"exit {rc}\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "DECISION": str(tmp_path / "decision.json"), "OUT": str(tmp_path / "out"), "MODEL": "crack-classifier"}


def _decision(passed: bool) -> dict:
    from fissure.promotion.gate import Check, GateDecision

    d = GateDecision(model="crack-classifier", task="classify", challenger_uri="models:/crack-classifier/7",
                     champion_uri="models:/crack-classifier/6", challenger_version="7", challenger_run_id="r",
                     champion_version="6",
                     checks=[Check("gate_set", passed, 0.91 if passed else 0.7, 0.88, 0.9, "" if passed else "f1 dropped"),
                             Check("latency", True, 12.5, 200.0)])
    return d.to_dict()


@pytest.mark.parametrize("passed,rc", [(True, 0), (False, 3)])
def test_the_gate_step_turns_the_decision_into_outputs(tmp_path, passed, rc):
    script = next(t for t in templates(load(ARGO / "fissure-retrain.yaml")) if t["name"] == "gate")["container"]["args"][0]
    env = _fake_fissure(tmp_path, _decision(passed), rc)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert out["decision"] == ("passed" if passed else "failed")
    assert out["challenger-version"] == "7" and out["champion-version"] == "6"
    assert out["numbers"].startswith(f"gate_set: {'pass' if passed else 'FAIL'} {0.91 if passed else 0.7} (limit 0.88, champion 0.9)")
    assert out["reasons"] == ("" if passed else "f1 dropped")


def test_the_gate_step_fails_on_an_error(tmp_path):
    script = next(t for t in templates(load(ARGO / "fissure-retrain.yaml")) if t["name"] == "gate")["container"]["args"][0]
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=_fake_fissure(tmp_path, None, 1),
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1


# ------------------------------------------------------------------------------ the chart


def _without_chart_metadata(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("namespace", None)
    return doc


def test_the_chart_renders_the_same_objects_for_the_default_release(tools):
    docs = {d["metadata"]["name"]: _without_chart_metadata(d) for d in helm_template(tools)}
    plain = {d["metadata"]["name"]: d for d in map(load, FILES)}
    assert docs == plain


def test_the_chart_names_the_release_objects(tools):
    docs = helm_template(tools, "--set", "argo.serviceAccount.name=trainer", "--set", "argo.image.tag=9.9.9",
                         "--set", "minio.auth.existingSecret=s3-creds", "--set", "argo.revision=v2",
                         release="lab", namespace="ml")
    text = json.dumps(docs)
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    # the objects are the release's own: lab-fissure-*, the CronWorkflows start lab's template
    assert {d["metadata"]["name"] for d in docs if d["kind"] in ("WorkflowTemplate", "CronWorkflow")} == \
        {"lab-fissure-train", "lab-fissure-retrain", "lab-fissure-retrain-weekly", "lab-fissure-retrain-feedback"}
    assert {d["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] for d in docs if d["kind"] == "CronWorkflow"} == \
        {"lab-fissure-retrain"}
    wt = next(d for d in docs if d["metadata"]["name"] == "lab-fissure-retrain")
    assert wt["spec"]["synchronization"]["mutexes"] == [{"name": "lab-fissure-retrain"}]
    assert wt["spec"]["serviceAccountName"] == "trainer"
    ingest = wt["spec"]["templates"][0]["container"]
    assert ingest["envFrom"] == [{"configMapRef": {"name": "lab-fissure-config"}}]
    assert ingest["image"] == "ghcr.io/fissure/fissure-training:9.9.9"
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in ingest["env"] if e["name"].startswith("AWS_")} == {"s3-creds"}
    assert next(p for p in wt["spec"]["arguments"]["parameters"] if p["name"] == "revision")["value"] == "v2"
    assert "fissure-config" not in text.replace("lab-fissure-config", "") and "@@" not in text
    # without argo.serviceAccount.name the pods run as the release's own account
    docs = helm_template(tools, release="lab", namespace="ml")
    assert {spec_of(d)["serviceAccountName"] for d in docs if d["kind"] == "WorkflowTemplate"} == {"lab-fissure-workflow"}
    assert "{{workflow.parameters.models}}" in text  # Argo's own expressions survive Helm


def test_the_training_steps_take_argo_train_resources_whole(tools):
    def train_resources(*args: str) -> list[dict]:
        return [t["container"]["resources"] for d in helm_template(tools, *args) if d["kind"] == "WorkflowTemplate"
                for t in templates(d) if t["name"] == "train"]

    assert train_resources() == [fw.TRAIN_RESOURCES] * 2  # fissure-train and fissure-retrain
    gpu = train_resources("--set", "argo.trainResources.requests.cpu=500m",
                          "--set-string", "argo.trainResources.limits.nvidia\\.com/gpu=1")
    assert gpu == [{"requests": {"cpu": "500m", "memory": "4Gi"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}}] * 2
    # the other steps keep their own requests
    wt = next(d for d in helm_template(tools, "--set", "argo.trainResources.requests.cpu=500m")
              if d["metadata"]["name"] == "fissure-retrain")
    assert {t["name"]: t["container"]["resources"]["requests"]["cpu"] for t in templates(wt)
            if "container" in t}["gate"] == "500m"
    bad = subprocess.run([tools["HELM"], "template", "fissure", str(CHART), "--kube-version", "1.33.0", "--set",
                          "argo.enabled=true", "--set", "argo.trainResources.requests.cpu=two"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "trainResources" in bad.stderr, bad.stderr


def test_the_chart_leaves_out_the_cron_workflows_when_asked(tools):
    kinds = [d["kind"] for d in helm_template(tools, "--set", "argo.schedule=", "--set", "argo.feedbackTrigger.enabled=false")]
    assert sorted(kinds) == ["WorkflowTemplate", "WorkflowTemplate"]
    cm = subprocess.run([tools["HELM"], "template", "fissure", str(CHART), "--namespace", "fissure", "--kube-version",
                         "1.33.0", "--show-only", "templates/configmap.yaml", "--set", "argo.enabled=true"],
                        capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(cm)["data"]
    used = set()  # what the scripts read and their own env does not set
    for t in (t for d in map(load, FILES) for t in templates(d) if "container" in t):
        read = set(re.findall(r"\$\{?(FISSURE_[A-Z_]+)", "\n".join(t["container"]["args"])))
        used |= read - {e["name"] for e in t["container"].get("env", [])}
    assert {"FISSURE_RELEASE", "FISSURE_MODEL_STORE"} <= used
    assert used <= set(data), f"the scripts read {used - set(data)}, which the ConfigMap does not set"


def test_the_chart_rbac_is_in_step_with_argo_rbac(tools):
    plain = {d["kind"]: d for d in yaml.safe_load_all((ARGO / "rbac.yaml").read_text())}
    out = subprocess.run([tools["HELM"], "template", "fissure", str(CHART), "--namespace", "fissure", "--kube-version",
                          "1.33.0", "--show-only", "templates/argo-rbac.yaml", "--set", "argo.enabled=true"],
                         capture_output=True, text=True, check=True).stdout
    chart = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert chart["Role"]["rules"] == plain["Role"]["rules"] == fw.WORKFLOW_RULES
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert chart[kind]["metadata"]["name"] == plain[kind]["metadata"]["name"] == "fissure-workflow"
    assert chart["RoleBinding"]["subjects"][0]["name"] == plain["RoleBinding"]["subjects"][0]["name"]
    # the account the workflows run as
    assert {spec_of(load(p)).get("serviceAccountName") for p in FILES if load(p)["kind"] == "WorkflowTemplate"} == \
        {plain["ServiceAccount"]["metadata"]["name"]}


# ------------------------------------------------------------------------------ fissure retrain --argo


def test_the_submitted_workflow_is_valid(schemas):
    params = submit.params_from(revision="v1.2", models=["crack-classifier"], min_feedback=20, promote=False,
                                actuator="kserve-knative", steps=[5, 50, 100], bake="5m")
    doc = submit.workflow_manifest(params, submitted_by="ana")
    assert schema_errors(schemas, doc) == []
    from hera.workflows import models as m
    m.Workflow.model_validate(doc)
    args = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert args == {"revision": "v1.2", "models": '["crack-classifier"]', "min-feedback": "20", "promote": "false",
                    "actuator": "kserve-knative", "steps": "5,50,100", "bake": "5m"}
    template_params = {p["name"] for p in load(ARGO / "fissure-retrain.yaml")["spec"]["arguments"]["parameters"]}
    assert set(args) <= template_params
    assert "arguments" not in submit.workflow_manifest(submit.RetrainParams())["spec"]  # the template's defaults


@pytest.mark.parametrize("given,word", [
    ({"models": ["Crack Classifier"]}, "models"), ({"steps": [50, 10]}, "steps"), ({"steps": [0, 100]}, "steps"),
    ({"bake": "5 minutes"}, "bake"), ({"bake": "-5m"}, "bake"), ({"actuator": "local"}, "actuator"), ({"revision": "{{x}}"}, "revision"),
    ({"min_feedback": -1}, "min_feedback"), ({"repo": "https://evil.example/x.git"}, "repo"),
])
def test_bad_parameters_are_one_line_usage_errors(given, word):
    with pytest.raises(UsageError) as err:
        submit.params_from(**given)
    assert word in str(err.value) and "\n" not in str(err.value)


def test_no_cluster_configuration_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UsageError, match="no Kubernetes cluster configured"):
        submit.submit_retrain(kubeconfig=str(tmp_path / "missing"))


def test_an_unreachable_api_server_is_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ml"}}]}))
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        submit.submit_retrain(kubeconfig=str(cfg))


def _heredoc(script: str) -> str:
    """The Python a step's script runs (`python - <<'PY' ... PY`)."""
    return script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]


@pytest.mark.parametrize("min_feedback,due", [(2, "true"), (3, "false")])
def test_the_ingest_step_counts_feedback_since_the_newest_registered_version(tmp_path, min_feedback, due):
    """The feedback trigger's count, against a real MLflow registry: items judged after the newest
    version of any of the models are new; the run is due at min-feedback of them."""
    from datetime import datetime, timedelta, timezone

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("crack-classifier")
    client.create_model_version("crack-classifier", source=str(tmp_path / "model"))
    now = datetime.now(timezone.utc)
    (tmp_path / "data" / "feedback").mkdir(parents=True)
    items = [{"path": "a.jpg", "judged_at": (now - timedelta(hours=1)).isoformat()},  # the last run had it
             {"path": "b.jpg", "judged_at": (now + timedelta(hours=1)).isoformat()},
             {"path": "c.jpg", "judged_at": (now + timedelta(hours=2)).replace(tzinfo=None).isoformat()}]
    (tmp_path / "data" / "feedback" / "manifest.json").write_text(json.dumps({"items": items}))
    script = next(t for t in templates(load(ARGO / "fissure-retrain.yaml")) if t["name"] == "ingest")["container"]["args"][0]
    (tmp_path / "out").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "OUT": str(tmp_path / "out"),
           "MODELS": '["crack-classifier", "crack-segmenter"]', "MIN_FEEDBACK": str(min_feedback)}
    proc = subprocess.run([sys.executable, "-c", _heredoc(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "new-feedback").read_text() == "2"
    assert (tmp_path / "out" / "due").read_text() == due


@pytest.mark.slow
def test_the_package_step_puts_the_mar_in_the_model_store(tmp_path, minio):
    """The package step's copy to a real MinIO (the chart's model store); `fissure package` is
    stood in by a script that writes KServe's TorchServe layout where --out says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fissure").write_text(
        "#!/bin/bash\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && out=\"$2\"; shift; done\n"
        "mkdir -p \"$out/model-store\" \"$out/config\"\necho mar > \"$out/model-store/$MODEL.mar\"\n"
        "echo props > \"$out/config/config.properties\"\n")
    (bin_dir / "fissure").chmod(0o755)
    script = next(t for t in templates(load(ARGO / "fissure-retrain.yaml")) if t["name"] == "package")["container"]["args"][0]
    env = {**os.environ, **minio.env, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OUT": str(tmp_path / "out"), "MODEL": "crack-classifier", "VERSION": "7", "WORKDIR": str(tmp_path),
           "FISSURE_MODEL_STORE": f"s3://{minio.bucket}/models"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dest = f"s3://{minio.bucket}/models/crack-classifier/7"
    assert (tmp_path / "out" / "storage-uri").read_text() == dest
    fs = minio.fs()
    assert fs.cat(f"{dest}/model-store/crack-classifier.mar") == b"mar\n"
    assert fs.cat(f"{dest}/config/config.properties") == b"props\n"


@pytest.mark.parametrize("steps,bake,rc,outcome", [("", "", 0, "promoted"), ("10,100", "5m", 3, "rolled-back"),
                                                   ("", "", 1, None)])
def test_the_promote_step_calls_the_controller_with_the_parameters(tmp_path, steps, bake, rc, outcome):
    """`fissure promote` is stood in by a script that records its arguments and exits rc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fissure").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\nexit {rc}\n')
    (bin_dir / "fissure").chmod(0o755)
    script = next(t for t in templates(load(ARGO / "fissure-retrain.yaml")) if t["name"] == "promote")["container"]["args"][0]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "MODEL": "crack-classifier", "VERSION": "7", "ACTUATOR": "kserve-gateway", "NAMESPACE": "ml",
           "FISSURE_RELEASE": "lab", "FISSURE_PROMETHEUS_URL": "http://prom:9090", "FISSURE_MODEL_STORE": "s3://models",
           "FISSURE_CHALLENGER_STORAGE_URI": "s3://models/crack-classifier/7", "STEPS": steps, "BAKE": bake}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    argv = (tmp_path / "argv").read_text().splitlines()
    expected = ["promote", "--model", "crack-classifier", "--challenger", "7", "--actuator", "kserve-gateway",
                "--namespace", "ml", "--release", "lab", "--prometheus", "http://prom:9090", "--storage-root", "s3://models",
                "--out", str(tmp_path / "out" / "promotion.json")]
    expected += (["--steps", steps] if steps else []) + (["--bake", bake] if bake else [])
    assert argv == expected
    if outcome is None:
        assert proc.returncode == rc and not (tmp_path / "out" / "outcome").exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "outcome").read_text() == outcome
