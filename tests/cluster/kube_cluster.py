"""A real Kubernetes control plane for the tests: Debian's etcd + kube-apiserver v1.34.

`kube_apiserver` (session fixture, registered in tests/conftest.py so every test folder can use
it) starts etcd and kube-apiserver on free ports under a temporary directory, with token
authentication and RBAC (as a real cluster has them), writes a kubeconfig for an admin token,
and stops both and removes the directory at the end of the session, whatever happened.

No controllers, scheduler or kubelet run: objects are stored, validated (OpenAPI schemas, CRD
schemas and CEL rules, admission such as Pod Security) and served, but nothing reconciles them.
Tests share the one server: create your own namespace (`kube_apiserver.namespace(...)`).

    def test_x(kube_apiserver):
        kube_apiserver.apply_crds(UPSTREAM / "gateway-api-v1.2.1" / "standard-install.yaml",
                                  kinds={"HTTPRoute", "GRPCRoute"})
        kube_apiserver.kubectl("apply", "--server-side", "-f", path)
        env = kube_apiserver.env()            # KUBECONFIG=... for a subprocess

The binaries are built by `make k8s-binaries` (mk/cluster.mk; minutes once, cached in
~/.cache/fissure/k8s); the fixture runs it, so a cold `pytest` builds them too. The tests skip,
loudly, only when that build fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = (REPO.parent / "shared" / "k8s-upstream").resolve()
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _host_ip() -> str:
    """A non-loopback address of this machine: kube-apiserver refuses to advertise loopback
    (the `kubernetes` Service's endpoints may not be 127.0.0.0/8)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source
            ip = s.getsockname()[0]
        except OSError:
            ip = ""
    return ip if ip and not ip.startswith("127.") else ""


def _make(*targets: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-s", *targets], cwd=REPO, env=env,
                          capture_output=True, text=True)


def cluster_paths() -> dict[str, str]:
    """Build (when missing) and locate the binaries: K8S_RELEASE_BIN, ETCD, K8S_VERSION.
    Skips the calling test, with the build's output, when they cannot be built."""
    build = _make("k8s-binaries")
    if build.returncode != 0:
        pytest.skip(
            "KUBERNETES BINARIES COULD NOT BE BUILT: `make k8s-binaries` failed, so the tests "
            "against a real kube-apiserver did not run (it builds Kubernetes from the Go module "
            "proxy and installs etcd-server; it needs Go 1.25+, network the first time and ~9 GB):\n"
            f"{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    out = _make("cluster-paths")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 20) -> None:
        """SIGTERM, then after `grace` seconds SIGKILL to its process group (spawned in a new session)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@dataclass
class KubeAPIServer:
    """A running kube-apiserver: where it is, how to reach it, and kubectl against it."""

    url: str
    kubeconfig: Path
    token: str
    bin_dir: Path
    version: str
    workdir: Path
    _processes: list[Process] = field(default_factory=list, repr=False)

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess (a script, helm, fissure) to use this server: KUBECONFIG
        set and the v1.34 kubectl first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess:
        """Run kubectl against this server; with check=True a failure fails the test with its output."""
        proc = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def apply_crds(self, *paths: Path | str, kinds: set[str] | None = None) -> list[str]:
        """Server-side apply the CustomResourceDefinitions in these manifests (upstream install
        files mix CRDs with Deployments and webhooks that would need a cluster), only those
        defining `kinds` when given (each big CRD costs the server seconds of OpenAPI work),
        wait until they are Established, and return their names. Idempotent."""
        import yaml  # noqa: PLC0415  (only the tests that install CRDs pay for it)

        class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: 10x faster on 10 MB
            pass

        # the Prometheus Operator bundle has a bare `=` enum value (YAML 1.1 `value` tag)
        Loader.add_constructor("tag:yaml.org,2002:value", lambda ld, n: ld.construct_scalar(n))
        names, docs = [], []
        for path in paths:
            with open(path) as f:
                for doc in yaml.load_all(f, Loader=Loader):
                    if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition" and (
                            kinds is None or doc["spec"]["names"]["kind"] in kinds):
                        docs.append(doc)
                        names.append(doc["metadata"]["name"])
        if not docs:
            raise ValueError(f"no CustomResourceDefinition in {[str(p) for p in paths]}")
        body = "\n".join(json.dumps(d) for d in docs)  # kubectl reads a JSON stream
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fissure-tests",
                     "-f", "-", input=body)
        # not `kubectl wait`: it errors on a CRD whose status has no conditions yet
        deadline = time.monotonic() + 300
        while True:
            got = json.loads(self.kubectl("get", "crd", *names, "-o", "json").stdout)
            items = got.get("items", [got])  # one name: the object itself, not a List
            pending = [i["metadata"]["name"] for i in items
                       if not any(c["type"] == "Established" and c["status"] == "True"
                                  for c in i.get("status", {}).get("conditions") or [])]
            if not pending:
                return names
            if time.monotonic() > deadline:
                pytest.fail(f"CRDs not Established after 300s: {pending}")
            time.sleep(1)

    def namespace(self, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
        """Create a uniquely named namespace (optionally labelled), with the `default`
        ServiceAccount that kube-controller-manager would make (pods are refused without it),
        and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        manifest = {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels or {}}}
        self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest))
        self.kubectl("-n", name, "create", "serviceaccount", "default")
        return name

    def stop(self) -> None:
        for p in reversed(self._processes):
            p.stop()


def _write_kubeconfig(path: Path, url: str, token: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fissure-test\n  cluster:\n    server: {url}\n"
        "    insecure-skip-tls-verify: true\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: fissure-test\n  context:\n    cluster: fissure-test\n    user: admin\n"
        "current-context: fissure-test\n")
    path.chmod(0o600)


def _wait_ready(server: KubeAPIServer, procs: list[Process]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed, made at start
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.proc.returncode}) while starting:\n{p.tail()}")
        req = urllib.request.Request(f"{server.url}/readyz",
                                     headers={"Authorization": f"Bearer {server.token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT_S}s ({last}):\n{procs[-1].tail()}")


def start_kube_apiserver(bin_dir: Path, etcd: str, version: str, workdir: Path) -> KubeAPIServer:
    """Start etcd + kube-apiserver under workdir; the caller must call .stop() (the fixture does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "certs").mkdir()
    sa_key = workdir / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                   capture_output=True)
    token = uuid.uuid4().hex
    # token,user,uid,"groups": the admin is in system:masters, as kubeadm's admin.conf is
    (workdir / "tokens.csv").write_text(f'{token},fissure-admin,fissure-admin,"system:masters"\n')

    client, peer, secure = _free_port(), _free_port(), _free_port()
    etcd_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    url = f"https://127.0.0.1:{secure}"
    server = KubeAPIServer(url=url, kubeconfig=workdir / "kubeconfig", token=token,
                           bin_dir=bin_dir, version=version, workdir=workdir)
    _write_kubeconfig(server.kubeconfig, url, token)

    def spawn(name: str, cmd: list[str]) -> Process:
        log = workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                    start_new_session=True)
        p = Process(name, proc, log)
        server._processes.append(p)
        return p

    try:
        etcd_proc = spawn("etcd", [
            etcd, "--name", "fissure-test", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"fissure-test={peer_url}", "--log-level", "warn"])
        advertise = _host_ip()
        apiserver_cmd = [
            str(bin_dir / "kube-apiserver"),
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--secure-port", str(secure),
            "--cert-dir", str(workdir / "certs"),
            "--token-auth-file", str(workdir / "tokens.csv"),
            "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(sa_key),
            "--service-account-signing-key-file", str(sa_key),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--enable-admission-plugins", "NamespaceLifecycle,ServiceAccount,PodSecurity",
            "--profiling=false", "--v=1",
        ]
        if advertise:
            apiserver_cmd += ["--advertise-address", advertise]
        else:  # no routable address: keep the `kubernetes` Service without endpoints
            apiserver_cmd += ["--advertise-address", "10.96.0.1", "--endpoint-reconciler-type", "none"]
        api_proc = spawn("kube-apiserver", apiserver_cmd)
        _wait_ready(server, [etcd_proc, api_proc])
    except BaseException:
        server.stop()
        raise
    return server


def _scratch_dir() -> Path:
    # etcd fsyncs every write: on tmpfs the CRD-heavy tests run in seconds, not minutes
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="fissure-kube-", dir=base))


@contextlib.contextmanager
def running_kube_apiserver() -> Iterator[KubeAPIServer]:
    """A fresh etcd + kube-apiserver in a scratch folder, stopped and removed on exit."""
    paths = cluster_paths()
    workdir = _scratch_dir()
    server = None
    try:
        try:
            server = start_kube_apiserver(Path(paths["K8S_RELEASE_BIN"]), paths["ETCD"],
                                          paths["K8S_VERSION"], workdir / "cluster")
        except RuntimeError as exc:
            pytest.fail(f"kube-apiserver did not start: {exc}")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """A real kube-apiserver (etcd behind it) for the whole session; see the module docstring."""
    with running_kube_apiserver() as server:
        yield server
