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


from tests.conftest import free_ports  # noqa: E402,F401  (below the ephemeral range; the tests import it from here)


def png(size: int = 64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 120, 120)).save(buf, format="PNG")
    return buf.getvalue()


def http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """One request: (status, body), an HTTP error's status included (the tests assert on it)."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


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


# The Argo tests' source: small enough that prepare + both trainings + evaluate take minutes on a
# shared CPU. encoder none: the from-scratch segmenter (the default became the pretrained one).
TINY_PARAMS = {
    "prepare": {"count": 24, "size": 128, "patch_size": 64, "patch_stride": 64},
    "train_classifier": {"epochs": 1, "batch_size": 16, "size": 64, "patience": 0},
    "train_segmenter": {"epochs": 1, "min_epochs": 0, "batch_size": 4, "size": 128, "crop": 64, "patience": 0,
                        "model": {"encoder": "none"}},
    "evaluate": {"overlays": 1},
    # one epoch on 24 images is no model to judge: fissure-retrain's gate lets it through, so its
    # package step runs (the gate's refusals are tested in tests/promotion)
    "gate": {"floor": {"classify": 0.0, "segment": 0.0}, "latency_ms": 100000},
}


def source_repo(root: Path) -> Path:
    """This repository's committed tree as a one-commit repository (branch main) with TINY_PARAMS,
    for `git daemon` to serve as the workflows' source (the chart's argo.repo)."""
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


def git_daemon_command(repo: Path, host: str, port: int) -> list[str]:
    """`git daemon` serving source_repo()'s folder read-only at git://HOST:PORT/fissure.git."""
    return ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repo.parent}",
            f"--listen={host}", f"--port={port}", str(repo.parent)]


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
def background(cmd: list[str], log: Path, host: str, port: int, **kw) -> Iterator[subprocess.Popen]:
    """A host process (git daemon, mlflow server) listening on HOST:PORT while the block runs."""
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
        """KServe (kserve-up.sh: CRDs, the controllers built here, webhook certificates) and the
        serving image the chart's ServingRuntimes name."""
        if self._once("kserve"):
            self.images("serving")
            self.script("images.sh", "build", "kserve-controller", "llmisvc-controller", "storage-initializer",
                        timeout=5400)
            self.script("kserve-up.sh", str(self.bin_dir), str(self.state))

    def argo(self) -> None:
        """Argo Workflows (argo-up.sh: the pinned install, controller, executor and server built here)."""
        if self._once("argo"):
            self.script("images.sh", "build", "argo-controller", "argoexec", "argocli", timeout=5400)
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

    def prometheus(self) -> str:
        """The Prometheus Operator and a Prometheus (prometheus-up.sh, built here; named and
        selecting as kube-prometheus-stack's); its URL from the host (the Service's IP)."""
        if self._once("prometheus"):
            self.script("images.sh", "build", "prometheus-operator", "prometheus-config-reloader", "prometheus",
                        timeout=5400)
            self.script("prometheus-up.sh", str(self.bin_dir), str(self.state))
        svc = self.get("-n", "monitoring", "service", "kube-prometheus-stack-prometheus")
        return f"http://{svc['spec']['clusterIP']}:9090"

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

    def wait_workflow(self, namespace: str, name: str, seconds: int = 1800) -> tuple[dict, list[dict], float]:
        """Poll a Workflow until it ends: (the Workflow, its pods as last seen while they lived
        (podGC deletes them on success), seconds taken); a phase other than Succeeded fails the
        test with the pods' logs and the controller's."""
        started, phase, wf, pods = time.monotonic(), "", {}, {}
        while time.monotonic() - started < seconds and phase not in ("Succeeded", "Failed", "Error"):
            time.sleep(10)
            got = self.kubectl("-n", namespace, "get", "pods", "-o", "json", "-l",
                               f"workflows.argoproj.io/workflow={name}", check=False)
            if got.returncode == 0:
                pods.update({p["metadata"]["name"]: p for p in json.loads(got.stdout)["items"]})
            got = self.kubectl("-n", namespace, "get", "workflow", name, "-o", "json", check=False)
            if got.returncode == 0:
                wf = json.loads(got.stdout)
                phase = wf.get("status", {}).get("phase", "")
        took = time.monotonic() - started
        if phase != "Succeeded":
            logs = self.kubectl("-n", namespace, "logs", "-l", f"workflows.argoproj.io/workflow={name}",
                                "--all-containers", "--prefix", "--tail", "80", check=False)
            ctrl = self.kubectl("-n", "argo", "logs", "deploy/workflow-controller", "--tail", "40", check=False)
            pytest.fail(f"workflow {name} ended {phase or 'not'} after {took:.0f}s: "
                        f"{wf.get('status', {}).get('message')}\n{self.diagnose(namespace)}\n"
                        f"$ kubectl logs (workflow pods)\n{logs.stdout[-8000:]}{logs.stderr[-1000:]}\n"
                        f"$ controller logs\n{ctrl.stdout[-4000:]}{ctrl.stderr[-1000:]}")
        return wf, list(pods.values()), took

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
