"""KServe for real on `make cluster-up`'s node: images built here (no registry), KServe's controller
from its Go module with webhook certificates made by the script, and the chart's ServingRuntimes
and both InferenceServices in a namespace with Pod Security `restricted` enforced: the classifier
over http:// through KServe's storage initializer (built here too, injected as an init
container), the segmenter from a hostPath PersistentVolume (`pvc://`, mounted directly). Both
become Ready and answer through their cluster Services: v1 predict (classifier), v2 REST and v2
gRPC infer (segmenter).

NOT part of `make test`: a cold run builds ~6 GB of images (the serving image's Python
environment with torch) and KServe's controller (~15-30 min on 2 cores); warm, about 6-10 min
(cluster up, image import, the predictor starting TorchServe). Run it with `make test-cluster`
(root), which sets FISSURE_TEST_CLUSTER=1.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
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
NS = "fissure-it"
MODELS = ("crack-classifier", "crack-segmenter")
HELM = Path(os.environ.get("CACHE", Path.home() / ".cache" / "fissure")) / "bin" / "helm"


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 120, 120)).save(buf, format="PNG")
    return buf.getvalue()


def _storage(models: Path) -> list[dict]:
    """A hostPath PersistentVolume holding the packaged models, and its claim."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-models"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(models), "type": "Directory"},
                   "claimRef": {"namespace": NS, "name": "fissure-models"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "fissure-models", "namespace": NS},
           "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"{NS}-models",
                    "resources": {"requests": {"storage": "1Gi"}}}}
    return [pv, pvc]


def _chart_objects(tag: str, uris: dict[str, str]) -> tuple[dict[str, str], str]:
    """The chart's ServingRuntimes, serving ServiceAccount and both InferenceServices,
    pointed at the local image (pullPolicy Never) and the models' URIs: ({model: the
    InferenceService's name, which may carry the release's prefix}, the objects as YAML)."""
    sets = {
        "servingRuntime.image.registry": "ghcr.io", "servingRuntime.image.repository": "fissure/fissure-serving",
        "servingRuntime.image.tag": tag, "servingRuntime.image.pullPolicy": "Never",
        "servingRuntime.resources.requests.cpu": "250m", "servingRuntime.resources.requests.memory": "1Gi",
        **{f"models.{m}.storageUri": uri for m, uri in uris.items()},
        "serving.storage.existingSecret": "",
        "route.type": "none",
    }
    args = [str(HELM), "template", "fissure", str(REPO / "charts" / "fissure"), "--namespace", NS,
            "--kube-version", cluster_paths()["K8S_VERSION"].lstrip("v"),
            "--api-versions", "serving.kserve.io/v1beta1", "--api-versions", "serving.kserve.io/v1alpha1"]
    for k, v in sets.items():
        args += ["--set-string" if k.endswith("tag") else "--set", f"{k}={v}"]
    rendered = _run(args).stdout
    keep = [d for d in yaml.safe_load_all(rendered) if d and (
        d["kind"] in ("ServingRuntime", "InferenceService")
        or (d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-serving")))]
    assert {d["kind"] for d in keep} >= {"ServingRuntime", "InferenceService"}, rendered[:2000]
    isvcs = {d["metadata"]["labels"]["fissure.dev/model"]: d["metadata"]["name"]
             for d in keep if d["kind"] == "InferenceService"}
    assert set(isvcs) == set(MODELS), isvcs
    return isvcs, yaml.safe_dump_all(keep)


def _host_ip() -> str:
    """The node's address (as up.sh picks it): pods reach the host there."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    return route.split(" src ")[1].split()[0]


@contextlib.contextmanager
def _http_server(directory: Path, host: str):
    """Serve `directory` over plain HTTP on host:<free port> (the storage initializer's source)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, free_ports(1)[0]), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _wait_ready(kubectl: list[str], name: str, seconds: int = 1200) -> None:
    deadline, isvc = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        got = subprocess.run([*kubectl, "-n", NS, "get", "inferenceservice", name, "-o", "json"],
                             capture_output=True, text=True)
        if got.returncode == 0:
            isvc = json.loads(got.stdout)
            if any(c["type"] == "Ready" and c["status"] == "True" for c in isvc.get("status", {}).get("conditions", [])):
                return
        time.sleep(5)
    pods = subprocess.run([*kubectl, "-n", NS, "get", "pods", "-o", "wide"], capture_output=True, text=True).stdout
    desc = subprocess.run([*kubectl, "-n", NS, "describe", "pods"], capture_output=True, text=True).stdout
    logs = subprocess.run([*kubectl, "-n", NS, "logs", "-l", f"serving.kserve.io/inferenceservice={name}",
                           "--tail", "60", "--all-containers"], capture_output=True, text=True)
    pytest.fail(f"InferenceService {name} not Ready: {json.dumps(isvc.get('status'), indent=1)[-3000:]}\n"
                f"{pods}\n{desc[-4000:]}\n{logs.stdout[-4000:]}{logs.stderr[-1000:]}")


def _service(kubectl: list[str], isvc: str) -> str:
    """IP:PORT of the predictor's cluster Service (its first port: REST)."""
    svc = json.loads(_run([*kubectl, "-n", NS, "get", "service", f"{isvc}-predictor", "-o", "json"]).stdout)
    return f"{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"


def _post(url: str, body: dict) -> dict:
    """POST JSON; retried briefly while kube-proxy's rules for a new Service settle."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    last = None
    for _ in range(30):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # an answer, not a routing problem: fail with it
            pytest.fail(f"{url}: {e.code} {e.read()[:2000]!r}")
        except OSError as e:
            last = e
            time.sleep(2)
    pytest.fail(f"no answer from {url}: {last}")


def test_inferenceservices_ready_and_answer_on_the_node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, CNI)")
    if any(_in_use(p) for p in FIXED_PORTS) or Path("/var/lib/kubelet").exists():
        pytest.skip("a cluster seems to be up already: `make cluster-down` first")
    paths = cluster_paths()
    bin_dir = paths["K8S_RELEASE_BIN"]
    tag = yaml.safe_load((REPO / "charts" / "fissure" / "Chart.yaml").read_text())["appVersion"]
    # the images (cached: a warm run only hashes)
    _run(["make", "-s", "cluster-images"], cwd=REPO, timeout=3600)
    state = tmp_path / "cluster"
    kubeconfig = state / "kubeconfigs" / "admin"
    kubectl = [f"{bin_dir}/kubectl", "--kubeconfig", str(kubeconfig)]
    env = {**os.environ, "CTR_ADDRESS": str(state / "containerd" / "containerd.sock")}
    try:
        _run(["bash", str(CLUSTER / "up.sh"), bin_dir, str(state)], cwd=REPO, timeout=900)
        _run(["bash", str(CLUSTER / "images.sh"), "import", "serving"], cwd=REPO, env=env, timeout=1800)
        _run(["bash", str(CLUSTER / "kserve-up.sh"), bin_dir, str(state)], cwd=REPO, env=env, timeout=900)

        # two tiny models, registered and packaged by `fissure package` (KServe's TorchServe layout)
        models = state / "models"
        menv = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "FISSURE_HOME": str(tmp_path / "home"), "FISSURE_TORCH_THREADS": "1"}
        _run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "tests" / "serving" / "_models.py"), str(models)],
             env=menv, timeout=600)
        assert all((models / "model-store" / f"{m}.mar").is_file() for m in MODELS)
        subprocess.run(["chmod", "-R", "a+rX", str(models)], check=True)

        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}
        _run([*kubectl, "apply", "-f", "-"], input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                "items": [namespace, *_storage(models)]}))
        # the classifier comes over http:// through KServe's storage initializer (an archive it
        # unpacks), the segmenter from the PersistentVolume (pvc://, mounted, no init container)
        www = tmp_path / "www"
        www.mkdir()
        with tarfile.open(www / "models.tar.gz", "w:gz") as archive:
            for part in ("model-store", "config"):
                archive.add(models / part, arcname=part)
        with _http_server(www, _host_ip()) as base_url:
            isvcs, objects = _chart_objects(tag, {"crack-classifier": f"{base_url}/models.tar.gz",
                                                  "crack-segmenter": "pvc://fissure-models/"})
            _run([*kubectl, "apply", "--server-side", "-f", "-"], input=objects)
            for name in isvcs.values():
                _wait_ready(kubectl, name)
        pods = {model: json.loads(_run([*kubectl, "-n", NS, "get", "pods", "-l",
                                        f"serving.kserve.io/inferenceservice={name}", "-o", "json"]).stdout)["items"][0]
                for model, name in isvcs.items()}
        for pod in pods.values():
            assert pod["spec"]["containers"][0]["image"] == f"ghcr.io/fissure/fissure-serving:{tag}"
        assert not pods["crack-segmenter"]["spec"].get("initContainers"), "pvc:// needs no storage initializer"
        # the injected storage initializer: the local image, admitted by Pod Security restricted, done
        (init,) = pods["crack-classifier"]["spec"]["initContainers"]
        assert init["image"] == "fissure.local/kserve-storage-initializer:v0.20.0"
        assert init["securityContext"]["runAsNonRoot"] is True
        (status,) = pods["crack-classifier"]["status"]["initContainerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == 0, status

        # through each predictor's cluster Service (kube-proxy routes the ClusterIP)
        png = _png()
        b64 = base64.b64encode(png).decode()
        clf = _service(kubectl, isvcs["crack-classifier"])
        answer = _post(f"http://{clf}/v1/models/crack-classifier:predict", {"instances": [{"b64": b64}]})
        pred = answer["predictions"][0]
        assert pred["label"] in ("crack", "no_crack"), answer
        assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4, answer
        seg = _service(kubectl, isvcs["crack-segmenter"])
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}
        answer = _post(f"http://{seg}/v2/models/crack-segmenter/infer", body)
        assert {o["name"] for o in answer["outputs"]} >= {"mask_png", "crack_ratio"}, answer
        # v2 gRPC on the Service's h2c port
        import numpy as np
        import tritonclient.grpc as grpcclient

        ip = seg.split(":")[0]
        client = grpcclient.InferenceServerClient(f"{ip}:8081")
        assert client.is_model_ready("crack-segmenter")
        image = grpcclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png], dtype=object))
        result = client.infer("crack-segmenter", [image])
        ratio = float(result.as_numpy("crack_ratio")[0])
        assert 0.0 <= ratio <= 1.0
    finally:
        down = subprocess.run(["bash", str(CLUSTER / "down.sh"), str(state)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path("/var/lib/kubelet").exists()
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in rules, rules[-2000:]
