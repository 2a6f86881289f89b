"""A real single-node Kubernetes cluster for the tests: `make cluster-up`'s node (manifests/cluster/up.sh:
etcd, the control plane, containerd + runc, CNI, kubelet, kube-proxy) on this machine, as root.

One node serves the whole tests/cluster package (the `node` fixture in tests/cluster/conftest.py):
it is brought up once, each add-on is installed the first time a test asks for it, and down.sh
stops all of it after the package's last test, whatever happened; the fixture then checks that
nothing is left (processes, /var/lib/kubelet, mounts, iptables rules).

    def test_x(node):
        node.kserve()                          # KServe (kserve-up.sh) + the serving image, once
        ns = node.namespace("fissure-x")       # Pod Security `restricted` enforced
        node.kubectl("-n", ns, "apply", "-f", path)

Images are built by manifests/cluster/images.sh (cached under ~/.cache/fissure/images; minutes to
tens of minutes cold, a hash check warm) and imported into containerd's image store, which is
kept between runs in ~/.cache/fissure/containerd (up.sh's CONTAINERD_ROOT), so a warm run
imports nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kube_cluster import REPO, cluster_paths

CLUSTER = REPO / "manifests" / "cluster"
CACHE = Path(os.environ.get("CACHE", Path.home() / ".cache" / "fissure"))
HELM = CACHE / "bin" / "helm"
FIXED_PORTS = {16443: "kube-apiserver", 12379: "etcd", 10250: "kubelet", 10257: "controller-manager",
               10259: "scheduler"}
MODELS = ("crack-classifier", "crack-segmenter")
TAG = yaml.safe_load((REPO / "charts" / "fissure" / "Chart.yaml").read_text())["appVersion"]
SERVING_IMAGE = f"ghcr.io/fissure/fissure-serving:{TAG}"
NODE_VALUES = CLUSTER / "values-node.yaml"  # the chart's values for this node
ARGO_VERSION = "v4.0.5"  # mk/images.mk's ARGO_WORKFLOWS_VERSION: the newest v4 the Go proxy serves


def values_image(key: str) -> str:
    """The image NODE_VALUES names at a dotted key (minio.mcImage, ...)."""
    part = yaml.safe_load(NODE_VALUES.read_text())
    for k in key.split("."):
        part = part[k]
    return f"{part['registry']}/{part['repository']}:{part['tag']}"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """Run a command; a failure fails the test with the command's output."""
    kw.setdefault("timeout", 900)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def assert_uploaded(out: str) -> None:
    """upload-models.sh's output names every file of both packaged stores, for each model."""
    for model in MODELS:
        for rel in ("model-store/crack-classifier.mar", "model-store/crack-segmenter.mar", "config/config.properties"):
            assert f">> s3://fissure-models/{model}/champion/{rel}" in out, out


def in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def host_ip() -> str:
    """The node's address (as up.sh picks it): pods reach the host there."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    return route.split(" src ")[1].split()[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def png(size: int = 64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 120, 120)).save(buf, format="PNG")
    return buf.getvalue()


def post_json(url: str, body: dict) -> dict:
    """POST JSON; retried briefly while kube-proxy's rules for a new Service settle."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    last = None
    for _ in range(30):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # an answer, not a routing problem: fail with it
            # the headers say who answered (fissure's front is uvicorn's `server`)
            pytest.fail(f"{url}: {e.code} {e.read()[:2000]!r} headers {dict(e.headers)}")
        except OSError as e:
            last = e
            time.sleep(2)
    pytest.fail(f"no answer from {url}: {last}")


class NodeCluster:
    """The running node: kubectl against it, and its add-ons installed on first use."""

    def __init__(self, state: Path, paths: dict[str, str]):
        self.state = state
        self.bin_dir = Path(paths["K8S_RELEASE_BIN"])
        self.version = paths["K8S_VERSION"]
        self.kubeconfig = state / "kubeconfigs" / "admin"
        self._done: set[str] = set()

    # ---- plumbing
    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the cluster scripts, helm and kubectl."""
        go = shutil.which("go") or "/usr/local/go/bin/go"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
                "CTR_ADDRESS": str(self.state / "containerd" / "containerd.sock"), "CACHE": str(CACHE),
                "GO": go, "TAG": TAG, "ARGO_WORKFLOWS_VERSION": ARGO_VERSION, **extra}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                        f"{proc.stderr[-4000:]}")
        return proc

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, *objects: dict, server_side: bool = False) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.kubectl("apply", *(["--server-side"] if server_side else []), "-f", "-", input=body)

    def script(self, name: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return run(["bash", CLUSTER / name, *args], cwd=REPO, env=self.env(), timeout=timeout)

    def _once(self, what: str) -> bool:
        if what in self._done:
            return False
        self._done.add(what)
        return True

    # ---- images and add-ons, each once per node
    def images(self, *names: str) -> None:
        """Build (cached) and import these images into the node's containerd."""
        todo = [n for n in names if self._once(f"image:{n}")]
        if todo:
            self.script("images.sh", "build", *todo, timeout=5400)
            self.script("images.sh", "import", *todo)

    def dns(self) -> None:
        """CoreDNS (built here) behind kubelet's clusterDNS: Service names resolve in pods."""
        if self._once("dns"):
            self.images("coredns")
            self.kubectl("apply", "-f", str(CLUSTER / "coredns.yaml"))
            self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=300s")

    def kserve(self) -> None:
        """KServe (kserve-up.sh: CRDs, the controller built here, webhook certificates) and the
        serving image the chart's ServingRuntimes name."""
        if self._once("kserve"):
            self.images("serving")
            self.script("images.sh", "build", "kserve-controller", "storage-initializer", timeout=5400)
            self.script("kserve-up.sh", str(self.bin_dir), str(self.state))

    def argo(self) -> None:
        """Argo Workflows (argo-up.sh: the pinned install, controller and executor built here)."""
        if self._once("argo"):
            self.script("images.sh", "build", "argo-controller", "argoexec", timeout=5400)
            self.script("argo-up.sh", str(self.bin_dir), str(self.state))

    def gateway(self) -> None:
        """A Gateway (traefik-up.sh: Traefik built here, the Gateway API v1.4 CRDs, the GatewayClass
        and fissure-gateway/fissure-gateway the chart's routes attach to); after kserve(), whose
        v1.2.1 CRDs it upgrades."""
        if self._once("gateway"):
            self.script("traefik-up.sh", str(self.bin_dir), str(self.state), timeout=5400)

    def metrics_server(self) -> None:
        """metrics-server (metrics-server-up.sh, built here): the resource metrics API that
        HorizontalPodAutoscalers, KServe's CPU autoscaling among them, read."""
        if self._once("metrics-server"):
            self.script("images.sh", "build", "metrics-server", timeout=5400)
            self.script("metrics-server-up.sh", str(self.bin_dir), str(self.state))

    def models(self) -> Path:
        """Two tiny models registered and packaged by `fissure package` (KServe's TorchServe
        layout: model-store/ and config/), readable by the pods' users; made once."""
        out = self.state / "models"
        if self._once("models"):
            home = self.state / "models-home"
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                   "FISSURE_HOME": str(home), "FISSURE_TORCH_THREADS": "1"}
            home.mkdir()
            run([REPO / ".venv" / "bin" / "python", REPO / "tests" / "serving" / "_models.py", out],
                env=env, timeout=600)
            assert all((out / "model-store" / f"{m}.mar").is_file() for m in MODELS)
            run(["chmod", "-R", "a+rX", out])
        return out

    # ---- objects tests make
    def namespace(self, name: str, restricted: bool = True) -> str:
        labels = {"pod-security.kubernetes.io/enforce": "restricted",
                  "pod-security.kubernetes.io/warn": "restricted"} if restricted else {}
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        return name

    def delete_namespace(self, name: str) -> None:
        """Free the node for the next test (its pods' CPU and memory); best effort."""
        self.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=300s", check=False, timeout=360)

    def models_volume(self, namespace: str, claim: str = "fissure-models") -> list[dict]:
        """A hostPath PersistentVolume holding models() and its claim in `namespace`."""
        name = f"{namespace}-models"
        pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
              "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                       "persistentVolumeReclaimPolicy": "Retain",
                       "hostPath": {"path": str(self.models()), "type": "Directory"},
                       "claimRef": {"namespace": namespace, "name": claim}}}
        pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
               "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": name,
                        "resources": {"requests": {"storage": "1Gi"}}}}
        return [pv, pvc]

    def host_volume(self, namespace: str, name: str, claim: str, owner: int) -> dict:
        """A hostPath PersistentVolume (1Gi, a new folder under the node's state owned by `owner`:
        fsGroup does not apply to hostPath) pre-bound to `claim` in `namespace`, for a
        StatefulSet's claim template (the node has no provisioner)."""
        path = self.state / f"{namespace}-{name}"
        path.mkdir()
        os.chown(path, owner, owner)
        return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{name}"},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Retain",
                         "hostPath": {"path": str(path), "type": "Directory"},
                         "claimRef": {"namespace": namespace, "name": claim}}}

    def upload_models(self, namespace: str, release: str, mc_image: str) -> str:
        """manifests/kind/upload-models.sh, as a user runs it after installing the chart: models()
        streamed into the release's MinIO at s3://fissure-models/<model>/champion (each prefix gets
        the packaged store: both tiny models and their config) by an mc pod, then the predictors
        restarted. Returns its output."""
        out = run(["bash", REPO / "manifests" / "kind" / "upload-models.sh", namespace, release], cwd=REPO,
                  env=self.env(FISSURE_KSERVE_DIR=str(self.staged_models(namespace)), MC_IMAGE=mc_image),
                  timeout=600).stdout
        assert_uploaded(out)
        return out

    def staged_models(self, namespace: str) -> Path:
        """A FISSURE_KSERVE_DIR for upload-models.sh: <model>/ -> models() for each model."""
        staged = self.state / f"upload-{namespace}"
        staged.mkdir(exist_ok=True)
        for model in MODELS:
            if not (staged / model).exists():
                (staged / model).symlink_to(self.models(), target_is_directory=True)
        return staged

    def assert_models_from_s3(self, namespace: str, isvcs: dict[str, str]) -> None:
        """Each model's Ready predictor pod got its model from s3://fissure-models/<model>/ through
        KServe's storage initializer (`isvcs`: model -> InferenceService name)."""
        for model, name in isvcs.items():
            pods = self.get("-n", namespace, "pods", "-l", f"serving.kserve.io/inferenceservice={name}")["items"]
            ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p["status"].get("conditions", []))]
            assert ready, f"{model}: no Ready predictor pod"
            init = {c["name"]: c for c in ready[0]["spec"].get("initContainers", [])}
            assert "storage-initializer" in init, ready[0]["spec"]
            assert init["storage-initializer"]["args"][0].startswith(f"s3://fissure-models/{model}/"), init

    def wait_isvc_ready(self, namespace: str, name: str, seconds: int = 1200) -> None:
        deadline, isvc = time.monotonic() + seconds, {}
        while time.monotonic() < deadline:
            got = self.kubectl("-n", namespace, "get", "inferenceservice", name, "-o", "json", check=False)
            if got.returncode == 0:
                isvc = json.loads(got.stdout)
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in isvc.get("status", {}).get("conditions", [])):
                    return
            time.sleep(5)
        pytest.fail(f"InferenceService {name} not Ready: {json.dumps(isvc.get('status'), indent=1)[-3000:]}\n"
                    f"{self.diagnose(namespace)}")

    def service(self, namespace: str, isvc: str) -> str:
        """IP:PORT of the predictor's cluster Service (its first port: REST)."""
        svc = self.get("-n", namespace, "service", f"{isvc}-predictor")
        return f"{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def diagnose(self, namespace: str) -> str:
        out = []
        for args in (["get", "all", "-o", "wide"], ["describe", "pods"], ["get", "events", "--sort-by=.lastTimestamp"],
                     ["logs", "--all-containers", "--prefix", "--tail", "60", "-l", "app.kubernetes.io/component"]):
            got = self.kubectl("-n", namespace, *args, check=False)
            out.append(f"$ kubectl -n {namespace} {' '.join(args)}\n{got.stdout[-4000:]}{got.stderr[-500:]}")
        return "\n".join(out)


def _leftovers() -> list[str]:
    left = [f"{name} still listens on {port}" for port, name in FIXED_PORTS.items() if in_use(port)]
    left += [p for p in ("/var/lib/kubelet", "/var/log/pods") if Path(p).exists()]
    if "/var/lib/kubelet" in Path("/proc/self/mounts").read_text():
        left.append("a mount under /var/lib/kubelet")
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    if "KUBE-" in rules or 'name: \\"fissure\\"' in rules:
        left.append("iptables rules: " + rules[-1500:])
    return left


@contextlib.contextmanager
def running_node_cluster(state: Path) -> Iterator[NodeCluster]:
    """up.sh into `state`; down.sh on exit, whatever happened, then nothing may be left."""
    paths = cluster_paths()
    run(["make", "-s", "cluster-node-apt", "k8s-tools"], cwd=REPO, timeout=3600)  # apt; helm for the chart
    env = {**os.environ, "CONTAINERD_ROOT": paths.get("CONTAINERD_ROOT", str(CACHE / "containerd")),
           "GO": shutil.which("go") or "/usr/local/go/bin/go"}
    try:
        run(["bash", CLUSTER / "up.sh", paths["K8S_RELEASE_BIN"], state], cwd=REPO, env=env)
        yield NodeCluster(state, paths)
    finally:
        down = subprocess.run(["bash", str(CLUSTER / "down.sh"), str(state)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not state.exists(), f"down.sh left {state}"
        left = _leftovers()
        assert not left, f"after down.sh: {left}\n{down.stdout[-2000:]}"
