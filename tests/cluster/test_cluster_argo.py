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

Part of `make test` (root), on the same node as the other tests in this folder, in the node
tests' own process beside the rest of the suite (mk/run-tests.sh): its two images (the workflow
controller and argoexec, built from Argo's Go module, ~30 min cold on 2 cores) are built in the
background from the suite's start (mk/images.mk), then kept in ~/.cache/fissure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from node_cluster import ARGO_VERSION, REPO, SERVING_IMAGE, free_ports, host_ip, run

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(5400),
]
NS = "fissure-argo"
# small enough that prepare + both trainings + evaluate take minutes on a shared CPU
TINY_PARAMS = {
    "prepare": {"count": 24, "size": 128, "patch_size": 64, "patch_stride": 64},
    "train_classifier": {"epochs": 1, "batch_size": 16, "size": 64, "patience": 0},
    # encoder none: the from-scratch segmenter this test ran with (the default became the pretrained one)
    "train_segmenter": {"epochs": 1, "min_epochs": 0, "batch_size": 4, "size": 128, "crop": 64, "patience": 0,
                        "model": {"encoder": "none"}},
    "evaluate": {"overlays": 1},
}


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, seconds: int = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(1)
    pytest.fail(f"nothing listens on {host}:{port} after {seconds}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def _background(cmd: list[str], log: Path, host: str, port: int, **kw):
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    try:
        _wait_port(host, port, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


def _source_repo(root: Path) -> Path:
    """This repository's committed tree as a one-commit repository (branch main), with TINY_PARAMS."""
    src = root / "fissure.git"
    src.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar.stdout, check=True)
    params = yaml.safe_load((src / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-C", str(src), "-c", "user.name=fissure-test", "-c", "user.email=test@fissure.invalid"]
    run([*git, "init", "-q", "-b", "main"])
    run([*git, "add", "-A"])
    run([*git, "commit", "-q", "-m", "fissure at HEAD with tiny params"])
    return src


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


def _diagnose(node) -> str:
    out = [node.diagnose(NS)]
    logs = node.kubectl("-n", NS, "logs", "-l", "workflows.argoproj.io/workflow", "--all-containers",
                        "--prefix", "--tail", "80", check=False)
    out.append(f"$ kubectl logs (workflow pods)\n{logs.stdout[-8000:]}{logs.stderr[-1000:]}")
    ctrl = node.kubectl("-n", "argo", "logs", "deploy/workflow-controller", "--tail", "40", check=False)
    out.append(f"$ controller logs\n{ctrl.stdout[-4000:]}{ctrl.stderr[-1000:]}")
    return "\n".join(out)


def test_fissure_train_workflow_succeeds_and_registers(node, tmp_path):
    if not shutil.which("git"):
        pytest.skip("git is not installed (the workflow's source comes from `git daemon`)")
    node.images("serving")
    node.argo()
    host = host_ip()
    git_port, mlflow_port = free_ports(2, host)
    repo = _source_repo(tmp_path / "git")
    mlflow = REPO / ".venv" / "bin" / "mlflow"
    mlflow_cmd = [str(mlflow), "server", "--host", host, "--port", str(mlflow_port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlartifacts"), "--serve-artifacts"]
    git_cmd = ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repo.parent}",
               f"--listen={host}", f"--port={git_port}", str(repo.parent)]
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
        with _background(git_cmd, tmp_path / "git-daemon.log", host, git_port), \
             _background(mlflow_cmd, tmp_path / "mlflow.log", host, mlflow_port,
                         env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host}:{mlflow_port},{host}"}):
            name = node.kubectl("create", "-o", "name", "-f", "-", input=json.dumps(workflow)).stdout.strip()
            started, phase, wf, pod = time.monotonic(), "", {}, None
            while time.monotonic() - started < 1800 and phase not in ("Succeeded", "Failed", "Error"):
                time.sleep(10)
                # the workflow's pod, seen while it lives (podGC deletes it on success)
                got = node.kubectl("-n", NS, "get", "pods", "-o", "json", "-l",
                                   f"workflows.argoproj.io/workflow={name.split('/')[-1]}", check=False)
                if got.returncode == 0 and json.loads(got.stdout)["items"]:
                    pod = json.loads(got.stdout)["items"][0]
                got = node.kubectl("-n", NS, "get", name, "-o", "json", check=False)
                if got.returncode == 0:
                    wf = json.loads(got.stdout)
                    phase = wf.get("status", {}).get("phase", "")
            took = time.monotonic() - started
            if phase != "Succeeded":
                pytest.fail(f"{name} ended {phase or 'not'} after {took:.0f}s: "
                            f"{wf.get('status', {}).get('message')}\n{_diagnose(node)}")
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
        assert pod is not None, "the workflow's pod was never seen"
        spec = pod["spec"]
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
        pods = [n for n in nodes.values() if n.get("type") == "Pod"]
        assert pods and all(n["phase"] == "Succeeded" for n in pods), nodes
        labels = node.get("namespace", NS)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    finally:
        node.delete_namespace(NS)
