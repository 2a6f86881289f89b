"""`fissure retrain --argo` against a real kube-apiserver with the Argo Workflows v4.1.2 CRDs (the
`kube_apiserver` fixture of tests/cluster): the chart's workflow objects are stored, so validated
by the server against the CRDs, and the submitted Workflow is created from the template; a second
release in the same namespace has its own template, which the CLI submits when
FISSURE_ARGO_TEMPLATE (the chart sets it for the API) names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fissure.errors import FissureError
from fissure.promotion import argo as submit

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fissure"
CRDS = REPO.parent / "shared" / "crds" / "argo-workflows-v4.1.2"
HELM = Path.home() / ".cache" / "fissure" / "bin" / "helm"

pytestmark = pytest.mark.timeout(1800)


def helm_template(namespace: str, release: str = "fissure") -> list[dict]:
    if not HELM.exists():
        subprocess.run(["make", "-s", "k8s-tools"], cwd=REPO, check=True, capture_output=True)
    out = subprocess.run([str(HELM), "template", release, str(CHART), "--namespace", namespace, "--kube-version",
                          "1.33.0", "--show-only", "templates/argo-workflows.yaml", "--show-only",
                          "templates/argo-rbac.yaml", "--set", "argo.enabled=true"],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.slow
def test_submit_creates_the_workflow_on_a_real_api_server(kube_apiserver, tmp_path):
    kube_apiserver.apply_crds(*sorted(CRDS.glob("*.yaml")))
    ns = kube_apiserver.namespace("argo")
    kubeconfig = kube_apiserver.env()["KUBECONFIG"]
    with pytest.raises(FissureError, match=f"WorkflowTemplate fissure-retrain not found in namespace {ns}"):
        submit.submit_retrain(namespace=ns, kubeconfig=kubeconfig)

    # the chart's objects, stored (and so validated) by the API server against the Argo CRDs
    rendered = tmp_path / "argo.yaml"
    rendered.write_text(yaml.safe_dump_all(helm_template(ns)))
    kube_apiserver.kubectl("apply", "--server-side", "-f", str(rendered))

    name = submit.submit_retrain(submit.params_from(models=["crack-segmenter"], min_feedback=5), namespace=ns,
                                 kubeconfig=kubeconfig, submitted_by="ana")
    assert name.startswith("fissure-retrain-")
    got = json.loads(kube_apiserver.kubectl("get", "workflow", name, "-n", ns, "-o", "json").stdout)
    assert got["spec"]["workflowTemplateRef"] == {"name": "fissure-retrain"}
    assert {p["name"]: p["value"] for p in got["spec"]["arguments"]["parameters"]} == \
        {"models": '["crack-segmenter"]', "min-feedback": "5"}
    assert got["metadata"]["annotations"]["fissure.dev/submitted-by"] == "ana"

    # a second release beside it: its own objects (the server would merge same-named ones), and
    # `fissure retrain --argo` with the API's FISSURE_ARGO_TEMPLATE submits that release's template
    beta = helm_template(ns, release="beta")
    assert not {(d["kind"], d["metadata"]["name"]) for d in beta} & \
        {(d["kind"], d["metadata"]["name"]) for d in helm_template(ns)}
    rendered.write_text(yaml.safe_dump_all(beta))
    kube_apiserver.kubectl("apply", "--server-side", "-f", str(rendered))
    env = {**os.environ, "KUBECONFIG": kubeconfig, "FISSURE_NAMESPACE": ns, "FISSURE_ARGO_TEMPLATE": "beta-fissure-retrain"}
    out = subprocess.run([sys.executable, "-m", "fissure", "retrain", "--argo", "--model", "crack-classifier"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name = out.stdout.split()[2].rstrip(":")  # "submitted workflow NAME: ..."
    assert name.startswith("beta-fissure-retrain-"), out.stdout
    got = json.loads(kube_apiserver.kubectl("get", "workflow", name, "-n", ns, "-o", "json").stdout)
    assert got["spec"]["workflowTemplateRef"] == {"name": "beta-fissure-retrain"}
    # the template is looked up before submitting: a release that is not there is one line
    env["FISSURE_ARGO_TEMPLATE"] = "gamma-fissure-retrain"
    out = subprocess.run([sys.executable, "-m", "fissure", "retrain", "--argo"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "WorkflowTemplate gamma-fissure-retrain not found" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
