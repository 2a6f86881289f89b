"""Argo Workflows for real on `make cluster-up`'s node: the `fissure-train` WorkflowTemplate
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

NOT part of `make test`: run it with `make test-cluster` (root; FISSURE_TEST_CLUSTER=1).
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
from kube_cluster import REPO, cluster_paths

from ..conftest import free_ports

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("FISSURE_TEST_CLUSTER") != "1",
                       reason="builds ~6 GB of images: run it with `make test-cluster` (root)"),
]
CLUSTER = REPO / "manifests" / "cluster"
FIXED_PORTS = (16443, 12379, 10250, 10257, 10259)
NS = "fissure-argo"
ARGO_VERSION = "v4.0.5"
# small enough that prepare + both trainings + evaluate take minutes on a shared CPU
TINY_PARAMS = {
    "prepare": {"count": 24, "size": 128, "patch_size": 64, "patch_stride": 64},
    "train_classifier": {"epochs": 1, "batch_size": 16, "size": 64, "patience": 0},
    # encoder none: the from-scratch segmenter this test ran with (the default became the pretrained one)
    "train_segmenter": {"epochs": 1, "min_epochs": 0, "batch_size": 4, "size": 128, "crop": 64, "patience": 0,
                        "model": {"encoder": "none"}},
    "evaluate": {"overlays": 1},
}


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _host_ip() -> str:
    """The node's address (as up.sh picks it): pods reach the host there."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    return route.split(" src ")[1].split()[0]


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
    _run([*git, "init", "-q", "-b", "main"])
    _run([*git, "add", "-A"])
    _run([*git, "commit", "-q", "-m", "fissure at HEAD with tiny params"])
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


def _diagnose(kubectl: list[str]) -> str:
    out = []
    for args in (["get", "workflows", "-o", "yaml"], ["get", "pods", "-o", "wide"], ["describe", "pods"],
                 ["get", "events", "--sort-by=.lastTimestamp"]):
        got = subprocess.run([*kubectl, "-n", NS, *args], capture_output=True, text=True)
        out.append(f"$ kubectl {' '.join(args)}\n{got.stdout[-5000:]}{got.stderr[-1000:]}")
    logs = subprocess.run([*kubectl, "-n", NS, "logs", "-l", "workflows.argoproj.io/workflow", "--all-containers",
                           "--prefix", "--tail", "80"], capture_output=True, text=True)
    out.append(f"$ kubectl logs\n{logs.stdout[-8000:]}{logs.stderr[-1000:]}")
    ctrl = subprocess.run([*kubectl, "-n", "argo", "logs", "deploy/workflow-controller", "--tail", "40"],
                          capture_output=True, text=True)
    out.append(f"$ controller logs\n{ctrl.stdout[-4000:]}{ctrl.stderr[-1000:]}")
    return "\n".join(out)


def test_fissure_train_workflow_succeeds_and_registers(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, CNI)")
    if any(_in_use(p) for p in FIXED_PORTS) or Path("/var/lib/kubelet").exists():
        pytest.skip("a cluster seems to be up already: `make cluster-down` first")
    if not shutil.which("git"):
        pytest.skip("git is not installed (the workflow's source comes from `git daemon`)")
    paths = cluster_paths()
    bin_dir = paths["K8S_RELEASE_BIN"]
    tag = yaml.safe_load((REPO / "charts" / "fissure" / "Chart.yaml").read_text())["appVersion"]
    image = f"ghcr.io/fissure/fissure-serving:{tag}"
    images_env = {**os.environ, "TAG": tag, "ARGO_WORKFLOWS_VERSION": ARGO_VERSION}
    # the images (cached: a warm run only hashes)
    _run(["bash", str(CLUSTER / "images.sh"), "build", "serving", "argo-controller", "argoexec"],
         cwd=REPO, env=images_env, timeout=3600)
    state = tmp_path / "cluster"
    kubeconfig = state / "kubeconfigs" / "admin"
    kubectl = [f"{bin_dir}/kubectl", "--kubeconfig", str(kubeconfig)]
    host = _host_ip()
    git_port, mlflow_port = free_ports(2)
    repo = _source_repo(tmp_path / "git")
    mlflow = REPO / ".venv" / "bin" / "mlflow"
    mlflow_cmd = [str(mlflow), "server", "--host", host, "--port", str(mlflow_port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlartifacts"), "--serve-artifacts"]
    git_cmd = ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repo.parent}",
               f"--listen={host}", f"--port={git_port}", str(repo.parent)]
    env = {**images_env, "CTR_ADDRESS": str(state / "containerd" / "containerd.sock")}
    try:
        _run(["bash", str(CLUSTER / "up.sh"), bin_dir, str(state)], cwd=REPO, timeout=900)
        _run(["bash", str(CLUSTER / "images.sh"), "import", "serving"], cwd=REPO, env=env, timeout=1800)
        _run(["bash", str(CLUSTER / "argo-up.sh"), bin_dir, str(state)], cwd=REPO, env=env, timeout=900)

        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fissure-config", "namespace": NS},
                  "data": {"MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}", "AWS_ENDPOINT_URL": "",
                           "DVC_REMOTE": "/work/dvc-remote"}}
        minio = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fissure-minio", "namespace": NS},
                 "stringData": {"root-user": "unused", "root-password": "unused"}}
        _run([*kubectl, "apply", "-f", "-"], input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [namespace, config, minio]}))
        _run([*kubectl, "-n", NS, "apply", "-f", str(REPO / "argo" / "rbac.yaml")])
        wft = _template(image, f"git://{host}:{git_port}/{repo.name}")
        _run([*kubectl, "-n", NS, "apply", "--server-side", "-f", "-"], input=json.dumps(wft))

        workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                    "metadata": {"generateName": "fissure-train-", "namespace": NS},
                    "spec": {"workflowTemplateRef": {"name": "fissure-train"},
                             "arguments": {"parameters": [{"name": "revision", "value": "main"}]}}}
        with _background(git_cmd, tmp_path / "git-daemon.log", host, git_port), \
             _background(mlflow_cmd, tmp_path / "mlflow.log", host, mlflow_port,
                         env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host}:{mlflow_port},{host}"}):
            name = _run([*kubectl, "create", "-o", "name", "-f", "-"], input=json.dumps(workflow)).stdout.strip()
            started, phase, wf, pod = time.monotonic(), "", {}, None
            while time.monotonic() - started < 1800 and phase not in ("Succeeded", "Failed", "Error"):
                time.sleep(10)
                # the workflow's pod, seen while it lives (podGC deletes it on success)
                got = subprocess.run([*kubectl, "-n", NS, "get", "pods", "-o", "json", "-l",
                                      f"workflows.argoproj.io/workflow={name.split('/')[-1]}"],
                                     capture_output=True, text=True)
                if got.returncode == 0 and json.loads(got.stdout)["items"]:
                    pod = json.loads(got.stdout)["items"][0]
                got = subprocess.run([*kubectl, "-n", NS, "get", name, "-o", "json"], capture_output=True, text=True)
                if got.returncode == 0:
                    wf = json.loads(got.stdout)
                    phase = wf.get("status", {}).get("phase", "")
            took = time.monotonic() - started
            if phase != "Succeeded":
                pytest.fail(f"{name} ended {phase or 'not'} after {took:.0f}s: "
                            f"{wf.get('status', {}).get('message')}\n{_diagnose(kubectl)}")
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
        labels = json.loads(_run([*kubectl, "get", "namespace", NS, "-o", "json"]).stdout)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    finally:
        down = subprocess.run(["bash", str(CLUSTER / "down.sh"), str(state)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path("/var/lib/kubelet").exists()
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in rules, rules[-2000:]
