"""Argo Workflows for real on the node (tests/cluster/node_cluster.py): the `fissure-train` WorkflowTemplate
(argo/train-pipeline.yaml, what `make workflows` renders) runs to phase Succeeded in a namespace
with Pod Security `restricted` enforced, and the models it trains are registered in MLflow.

- Argo: the pinned v4.1.2 install manifest with the controller and executor (argoexec) built here
  from the Go module (v4.0.5, the newest v4 the module proxy serves), manifests/cluster/argo-up.sh.
  The init and wait containers Argo adds to the workflow pod are admitted by `restricted`.
- The training image is the serving image (it holds fissure with torch, dvc and mlflow).
- The source: the workflow's git input artifact clones this repository's committed tree (HEAD,
  one commit, with a tiny params.yaml so the whole `dvc repro` takes a few CPU minutes) from a
  `git daemon` on the node's address (the chart's argo.repo, set here in the template).
- MLflow: `mlflow server` on the host, bound to the node's address, sqlite store and artifacts
  proxied (--serve-artifacts): the workflow logs and registers over HTTP only.
- DVC's remote: a folder in the pod's /work volume (the workflow's dvc-remote parameter); the
  `fissure-minio` Secret the template reads holds placeholders (no S3 here).
- argo-server (built here too): its API lists the workflow as Succeeded to a ServiceAccount allowed
  to read workflows in the namespace, and refuses a caller without a token (client auth mode).

Part of `make test` (root), on the same node as the other tests in this folder, in the node
tests' own process beside the rest of the suite (mk/run-tests.sh): its two images (the workflow
controller and argoexec, built from Argo's Go module, ~30 min cold on 2 cores) are built in the
background from the suite's start (mk/images.mk), then kept in ~/.cache/fissure.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.error
import urllib.request

import pytest
import yaml
from node_cluster import (ARGO_VERSION, REPO, SERVING_IMAGE, background, free_ports, git_daemon_command, host_ip,
                          source_repo)

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(5400),
]
NS = "fissure-argo"
def _template(image: str, repo_url: str) -> dict:
    """argo/train-pipeline.yaml with what the chart sets per install: the image (argo.image), the
    repository (argo.repo) and requests that fit a 2-core node."""
    wft = yaml.safe_load((REPO / "argo" / "train-pipeline.yaml").read_text())
    (tmpl,) = wft["spec"]["templates"]
    tmpl["container"]["image"] = image
    tmpl["container"]["imagePullPolicy"] = "Never"
    tmpl["container"]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "6Gi"}}
    (source,) = tmpl["inputs"]["artifacts"]
    source["git"]["repo"] = repo_url
    return wft


def _argo_server_get(base: str, path: str, token: str | None) -> tuple[int, dict]:
    """GET argo-server's API (TLS with its own self-signed certificate, as upstream runs it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, {"body": e.read().decode(errors="replace")[:500]}


def _workflow_reader(node, namespace: str) -> str:
    """A ServiceAccount that may read the namespace's workflows, and a short-lived token for it."""
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "workflow-reader", "namespace": namespace}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "workflow-reader", "namespace": namespace},
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "workflow-reader", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "workflow-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "workflow-reader", "namespace": namespace}]}
    node.apply(sa, role, binding)
    return node.kubectl("-n", namespace, "create", "token", "workflow-reader", "--duration", "10m").stdout.strip()


def test_fissure_train_workflow_succeeds_and_registers(node, tmp_path):
    if not shutil.which("git"):
        pytest.skip("git is not installed (the workflow's source comes from `git daemon`)")
    node.images("serving")
    node.argo()
    host = host_ip()
    git_port, mlflow_port = free_ports(2, host)
    repo = source_repo(tmp_path / "git")
    mlflow = REPO / ".venv" / "bin" / "mlflow"
    mlflow_cmd = [str(mlflow), "server", "--host", host, "--port", str(mlflow_port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlartifacts"), "--serve-artifacts"]
    git_cmd = git_daemon_command(repo, host, git_port)
    try:
        node.namespace(NS)
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fissure-config", "namespace": NS},
                  "data": {"MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}", "AWS_ENDPOINT_URL": "",
                           "DVC_REMOTE": "/work/dvc-remote"}}
        minio = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fissure-minio", "namespace": NS},
                 "stringData": {"root-user": "unused", "root-password": "unused"}}
        node.apply(config, minio)
        node.kubectl("-n", NS, "apply", "-f", str(REPO / "argo" / "rbac.yaml"))
        wft = _template(SERVING_IMAGE, f"git://{host}:{git_port}/{repo.name}")
        node.kubectl("-n", NS, "apply", "--server-side", "-f", "-", input=json.dumps(wft))

        workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                    "metadata": {"generateName": "fissure-train-", "namespace": NS},
                    "spec": {"workflowTemplateRef": {"name": "fissure-train"},
                             "arguments": {"parameters": [{"name": "revision", "value": "main"}]}}}
        with background(git_cmd, tmp_path / "git-daemon.log", host, git_port), \
             background(mlflow_cmd, tmp_path / "mlflow.log", host, mlflow_port,
                         env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host}:{mlflow_port},{host}"}):
            name = node.kubectl("create", "-o", "name", "-f", "-", input=json.dumps(workflow)).stdout.strip()
            wf, pods, took = node.wait_workflow(NS, name.split("/")[-1])
            print(f"\n{name} Succeeded in {took:.0f}s")
            # the models it registered, as MLflow's REST API lists them
            base = f"http://{host}:{mlflow_port}/api/2.0/mlflow"
            with urllib.request.urlopen(f"{base}/registered-models/search?max_results=100", timeout=60) as r:
                models = {m["name"]: m for m in json.load(r).get("registered_models", [])}
            assert {"crack-classifier", "crack-segmenter"} <= set(models), models
            for m in ("crack-classifier", "crack-segmenter"):
                versions = models[m].get("latest_versions", [])
                assert versions and versions[0]["status"] == "READY", models[m]
                aliases = {a["alias"] for a in models[m].get("aliases", [])}
                assert {"champion", "challenger"} <= aliases, models[m]

        # the workflow pod passed Pod Security `restricted` with Argo's init and wait containers
        assert pods, "the workflow's pod was never seen"
        spec = pods[0]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["init"], spec["initContainers"]
        assert {c["name"] for c in spec["containers"]} == {"wait", "main"}, spec["containers"]
        for c in [*spec["initContainers"], *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, (c["name"], sc)
            assert sc["capabilities"]["drop"] == ["ALL"], (c["name"], sc)
        argoexec = {c["image"] for c in [*spec["initContainers"], *spec["containers"]] if c["name"] != "main"}
        assert argoexec == {f"fissure.local/argoexec:{ARGO_VERSION}"}, argoexec
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        nodes = wf["status"]["nodes"]
        steps = [n for n in nodes.values() if n.get("type") == "Pod"]
        assert steps and all(n["phase"] == "Succeeded" for n in steps), nodes
        labels = node.get("namespace", NS)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

        # argo-server's API, as the UI and `argo --argo-server` use it: the workflow, Succeeded
        svc = node.get("-n", "argo", "service", "argo-server")
        base = f"https://{svc['spec']['clusterIP']}:2746"
        status, body = _argo_server_get(base, f"/api/v1/workflows/{NS}", None)
        assert status == 401, (status, body)
        status, body = _argo_server_get(base, f"/api/v1/workflows/{NS}", _workflow_reader(node, NS))
        assert status == 200, (status, body)
        listed = {w["metadata"]["name"]: w["status"]["phase"] for w in body.get("items") or []}
        assert listed.get(name.split("/")[-1]) == "Succeeded", listed
        server_pod = node.get("-n", "argo", "pods", "-l", "app=argo-server")["items"][0]
        assert server_pod["spec"]["containers"][0]["image"] == f"fissure.local/argocli:{ARGO_VERSION}"
    finally:
        node.delete_namespace(NS)
