"""`fissure retrain --argo` against a real kube-apiserver with the Argo Workflows v4.1.2 CRDs (the
`kube_apiserver` fixture of tests/cluster): the chart's workflow objects are stored, so validated
by the server against the CRDs, and the submitted Workflow is created from the template."""

from __future__ import annotations

import json
import subprocess
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


def helm_template(namespace: str) -> list[dict]:
    if not HELM.exists():
        subprocess.run(["make", "-s", "k8s-tools"], cwd=REPO, check=True, capture_output=True)
    out = subprocess.run([str(HELM), "template", "fissure", str(CHART), "--namespace", namespace, "--kube-version",
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
