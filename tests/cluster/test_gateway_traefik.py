"""The chart's Gateway API routes, served by a real Traefik, to real fissure serving fronts.

Traefik v3.6 (built from its Go module by `make gateway-traefik`, mk/gateway.mk) runs on this host
as the Gateway API implementation, against the `kube_apiserver` fixture (etcd + kube-apiserver
v1.34 on free ports, no node), as a ServiceAccount bound to Traefik's own RBAC for its Gateway
provider. On that server: the Gateway API v1.4 standard CRDs (from the sigs.k8s.io/gateway-api
module: Traefik v3.6 watches BackendTLSPolicy v1, which v1.2 lacks), a GatewayClass for
`traefik.io/gateway-controller`, the Gateway of manifests/kind/gateway.yaml (its listener on
Traefik's entry point's port), the chart's own HTTPRoute and GRPCRoutes (`helm template`,
default values), and per model a predictor Service shaped as KServe v0.20's Service reconciler
makes it from the chart's container ports (http1 on 80, h2c on 8081 with appProtocol
kubernetes.io/h2c) with an EndpointSlice on this host's non-loopback address (EndpointSlices
refuse 127.0.0.0/8).

The backends are the real thing minus TorchServe: one `fissure serve --runtime inprocess
--model <name>` per model (the serving front with the packaged MAR's model in process: KServe
v1 and v2 REST and gRPC), on this host's address, with the tiny models of
tests/serving/_models.py, plus a third one as the classifier's canary challenger. Each backend
serves only its own model, so a request routed to the wrong Service would get the other
server's 404 / NOT_FOUND, not an answer; which backend answered is read from its own
fissure_requests_total.

Shown through Traefik: v1 `:predict` (an Exact path, which a PathPrefix would miss: shown too),
v2 REST infer, v2 gRPC (h2c, routed by host), the wrong model's host refused by the right
backend, paths and gRPC methods the chart does not route (repository, health, metrics, another
verb) answered 404 / UNIMPLEMENTED by Traefik itself, and with canary.enabled (canary.yaml, in
a namespace of its own) the weighted HTTPRoute following the promotion controller's actuator:
100/0 all to the champion, 0/100 all to the challenger.

NOT part of `make test`: a cold run builds Traefik from its Go module (~20+ min on 2 cores);
warm, about a minute. Run it with `make test-cluster`, which sets FISSURE_TEST_CLUSTER=1.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from kube_cluster import REPO, KubeAPIServer, Process, _host_ip

from ..conftest import free_ports

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("FISSURE_TEST_CLUSTER") != "1",
                       reason="builds Traefik from its Go module (~20+ min cold): run it with "
                              "`make test-cluster`"),
]

MODELS = ("crack-classifier", "crack-segmenter")
# (key, model, FISSURE_MODEL_ROLE): one server per model, and the classifier's canary challenger
BACKENDS = (("crack-classifier", "crack-classifier", "champion"),
            ("crack-segmenter", "crack-segmenter", "champion"),
            ("crack-classifier-challenger", "crack-classifier", "challenger"))
CANARY_HOST = "canary.fissure.localtest.me"
HOST = "fissure.localtest.me"            # the chart's route.host
GRPC_SUFFIX = "grpc.fissure.localtest.me"  # the chart's route.grpcHostSuffix
K8S_VERSION = "1.34.12"
FISSURE = Path(sys.executable).with_name("fissure")
READY_TIMEOUT_S = 180


def _make(*targets: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-s", *targets], cwd=REPO, env=env,
                          capture_output=True, text=True)


def gateway_paths() -> dict[str, str]:
    """Build (when missing) Traefik and fetch the Gateway API CRDs; their paths (mk/gateway.mk)."""
    build = _make("gateway-traefik", "gateway-crds", "k8s-tools")
    if build.returncode != 0:
        pytest.fail(f"`make gateway-traefik gateway-crds k8s-tools` failed:\n"
                    f"{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    out = _make("gateway-paths")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def png(seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.normal(150, 20, size=(64, 96)).clip(0, 255)
    for x in range(96):  # a dark wavy crack
        y = int(12 + x * 0.4 + 3 * np.sin(x / 5 + seed))
        arr[max(0, y - 1): y + 2, x] = 30
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- processes


def spawn(name: str, cmd: list[str], log: Path, env: dict[str, str]) -> Process:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    return Process(name, proc, log)


@dataclass
class Backend:
    model: str
    ip: str
    http: int
    grpc: int
    proc: Process


@pytest.fixture(scope="module")
def host_ip() -> str:
    ip = _host_ip()
    if not ip:
        pytest.skip("this host has no non-loopback IPv4 address: EndpointSlices refuse 127.0.0.0/8")
    return ip


@pytest.fixture(scope="module")
def backends(tmp_path_factory, host_ip: str) -> Iterator[dict[str, Backend]]:
    """One `fissure serve --runtime inprocess --model <m>` per model, on this host's address."""
    base = tmp_path_factory.mktemp("gateway-backends")
    env = dict(os.environ)
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
                "FISSURE_HOME": str(base / "home"), "FISSURE_TORCH_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    made = subprocess.run([sys.executable, str(REPO / "tests" / "serving" / "_models.py"),
                           str(base / "out")], env=env, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, f"building the test models failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}"
    out = base / "out"
    running: dict[str, Backend] = {}
    try:
        for key, model, role in BACKENDS:
            http, grpc, tsi, tsm, tsx, tsg1, tsg2 = free_ports(7)
            cmd = [str(FISSURE), "serve", "--runtime", "inprocess", "--model", model,
                   "--host", host_ip, "--model-store", str(out / "model-store"),
                   "--config", str(out / "config" / "config.properties"),
                   "--http-port", str(http), "--grpc-port", str(grpc),
                   "--ts-inference-port", str(tsi), "--ts-management-port", str(tsm),
                   "--ts-metrics-port", str(tsx), "--ts-grpc-inference-port", str(tsg1),
                   "--ts-grpc-management-port", str(tsg2), "--workdir", str(base / f"work-{key}")]
            p = spawn(key, cmd, base / f"serve-{key}.log", {**env, "FISSURE_MODEL_ROLE": role})
            running[key] = Backend(model, host_ip, http, grpc, p)
        for b in running.values():
            deadline = time.monotonic() + 300
            while True:
                if b.proc.proc.poll() is not None:
                    pytest.fail(f"fissure serve ({b.model}) exited {b.proc.proc.returncode}:\n{b.proc.tail()}")
                try:
                    if httpx.get(f"http://{b.ip}:{b.http}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"fissure serve ({b.model}) not ready in 300s:\n{b.proc.tail()}")
                time.sleep(0.5)
        yield running
    finally:
        for b in running.values():
            b.proc.stop(grace=60)
        for b in running.values():
            assert b.proc.proc.returncode == 0, \
                f"fissure serve ({b.model}) exited {b.proc.proc.returncode} on SIGTERM:\n{b.proc.tail()}"


# ---------------------------------------------------------------------------- the cluster side


def kserve_like_service(name: str, namespace: str, backend: Backend) -> list[dict]:
    """The predictor Service as KServe v0.20 makes it from the chart's container ports (the first,
    http1:8080, as :80; h2c:8081 kept, appProtocol kubernetes.io/h2c because its name says h2c),
    and an EndpointSlice standing in for the predictor pod: the backend on this host."""
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [
             {"name": "http1", "port": 80, "targetPort": 8080, "protocol": "TCP"},
             {"name": "h2c", "port": 8081, "targetPort": 8081, "protocol": "TCP",
              "appProtocol": "kubernetes.io/h2c"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-host", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name,
                                 "endpointslice.kubernetes.io/managed-by": "fissure-tests"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [backend.ip], "conditions": {"ready": True}}],
         "ports": [{"name": "http1", "port": backend.http, "protocol": "TCP"},
                   {"name": "h2c", "port": backend.grpc, "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c"}]},
    ]


def render_routes(helm: str, namespace: str, gateway_ns: str, template: str = "route.yaml",
                  *values: str) -> list[dict]:
    """The chart's routes in `template` (default values but `values`), their parentRefs
    pointing to our Gateway."""
    proc = subprocess.run(
        [helm, "template", "fissure", str(REPO / "charts" / "fissure"), "--namespace", namespace,
         "--kube-version", K8S_VERSION,
         "--api-versions", "gateway.networking.k8s.io/v1/HTTPRoute",
         "--api-versions", "gateway.networking.k8s.io/v1/GRPCRoute",
         "--show-only", f"templates/{template}", *values,
         # a list: --set would replace it with one partial entry
         "--set-json", "route.gatewayAPI.parentRefs=" + json.dumps(
             [{"name": "fissure-gateway", "namespace": gateway_ns, "sectionName": "http"}])],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [d for d in load_all(proc.stdout) if d["kind"] in ("HTTPRoute", "GRPCRoute")]


def apply(server: KubeAPIServer, docs: list[dict]) -> None:
    server.kubectl("apply", "--server-side", "--field-manager=fissure-tests", "-f", "-",
                   input="\n".join(json.dumps(d) for d in docs))


def conditions(obj: dict) -> dict[str, str]:
    """type -> status of an object's status.conditions (or of a route's status.parents[] entry)."""
    found = obj["conditions"] if "conditions" in obj else obj.get("status", {}).get("conditions")
    return {c["type"]: c["status"] for c in found or []}


@dataclass
class Gateway:
    url: str
    port: int
    namespace: str
    gateway_ns: str
    routes: list[dict]
    canary_ns: str
    traefik: Process
    server: KubeAPIServer

    def post(self, path: str, host: str = HOST, **kw) -> httpx.Response:
        return httpx.post(self.url + path, headers={"Host": host}, timeout=60, **kw)

    def get(self, path: str, host: str = HOST, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Host": host}, timeout=60, **kw)


@pytest.fixture(scope="module")
def gateway(kube_apiserver: KubeAPIServer, backends: dict[str, Backend],
            tmp_path_factory) -> Iterator[Gateway]:
    paths = gateway_paths()
    server = kube_apiserver
    work = tmp_path_factory.mktemp("traefik")
    server.apply_crds(*sorted(Path(paths["GATEWAY_API_CRDS"]).glob("*.yaml")))
    gw_ns = server.namespace("gw")
    ns = server.namespace("fissure")
    canary_ns = server.namespace("canary")

    # Traefik's own RBAC for its Gateway provider, bound to a ServiceAccount of its namespace
    sa = "traefik-controller"
    server.kubectl("-n", gw_ns, "create", "serviceaccount", sa)
    rbac = load_all(Path(paths["TRAEFIK_RBAC"]).read_text())
    role = next(d for d in rbac if d["kind"] == "ClusterRole")
    binding = next(d for d in rbac if d["kind"] == "ClusterRoleBinding")
    role["metadata"]["name"] = f"{gw_ns}-traefik"
    binding["metadata"]["name"] = f"{gw_ns}-traefik"
    binding["roleRef"]["name"] = role["metadata"]["name"]
    binding["subjects"] = [{"kind": "ServiceAccount", "name": sa, "namespace": gw_ns}]
    apply(server, [role, binding])
    token = server.kubectl("-n", gw_ns, "create", "token", sa, "--duration", "2h").stdout.strip()
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: t\n  cluster:\n    server: {server.url}\n    insecure-skip-tls-verify: true\n"
        f"users:\n- name: traefik\n  user:\n    token: {token}\n"
        "contexts:\n- name: t\n  context:\n    cluster: t\n    user: traefik\ncurrent-context: t\n")
    kubeconfig.chmod(0o600)

    # The GatewayClass and the Gateway of manifests/kind/gateway.yaml, for Traefik
    (port,) = free_ports(1)
    klass = f"traefik-{gw_ns}"
    kind_gw = next(d for d in load_all((REPO / "manifests" / "kind" / "gateway.yaml").read_text())
                   if d["kind"] == "Gateway")
    kind_gw["metadata"]["namespace"] = gw_ns
    kind_gw["spec"]["gatewayClassName"] = klass
    for listener in kind_gw["spec"]["listeners"]:
        listener["port"] = port  # Traefik maps a listener to the entry point on its port
    apply(server, [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                    "metadata": {"name": klass},
                    "spec": {"controllerName": "traefik.io/gateway-controller"}}, kind_gw])

    helm = str(Path(paths["TRAEFIK"]).with_name("helm"))
    routes = render_routes(helm, ns, gw_ns)
    assert sorted(r["kind"] for r in routes) == ["GRPCRoute", "GRPCRoute", "HTTPRoute"], routes
    services = []
    for model in MODELS:
        services += kserve_like_service(f"fissure-{model}-predictor", ns, backends[model])
    # canary.enabled, in a namespace (and on a host) of its own: per model a weighted HTTPRoute
    # over the champion's and the challenger's predictor Services (canary.yaml)
    canary = render_routes(helm, canary_ns, gw_ns, "canary.yaml", "--set", "canary.enabled=true",
                           "--set", f"route.host={CANARY_HOST}")
    assert sorted(r["metadata"]["name"] for r in canary) == [
        "fissure-crack-classifier-canary", "fissure-crack-segmenter-canary"], canary
    services += kserve_like_service("fissure-crack-classifier-predictor", canary_ns, backends["crack-classifier"])
    services += kserve_like_service("fissure-crack-classifier-challenger-predictor", canary_ns,
                                    backends["crack-classifier-challenger"])
    for name in ("fissure-crack-segmenter-predictor", "fissure-crack-segmenter-challenger-predictor"):
        services += kserve_like_service(name, canary_ns, backends["crack-segmenter"])
    apply(server, services)
    apply(server, routes + canary)

    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    env["KUBECONFIG"] = str(kubeconfig)
    traefik = spawn("traefik", [
        paths["TRAEFIK"], "--global.checknewversion=false", "--global.sendanonymoususage=false",
        "--log.level=DEBUG", "--log.nocolor=true", f"--entrypoints.web.address=127.0.0.1:{port}",
        "--providers.kubernetesgateway=true",
        f"--providers.kubernetesgateway.namespaces={gw_ns},{ns},{canary_ns}"], work / "traefik.log", env)
    gw = Gateway(url=f"http://127.0.0.1:{port}", port=port, namespace=ns, gateway_ns=gw_ns,
                 routes=routes, canary_ns=canary_ns, traefik=traefik, server=server)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if traefik.proc.poll() is not None:
                pytest.fail(f"traefik exited {traefik.proc.returncode}:\n{traefik.tail()}")
            try:
                if all(gw.get(f"/v2/models/{m}/ready", host=h).status_code == 200
                       for m in MODELS for h in (HOST, CANARY_HOST)):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no route through traefik after {READY_TIMEOUT_S}s:\n{traefik.tail()}")
            time.sleep(1)
        yield gw
    finally:
        traefik.stop(grace=60)


# ---------------------------------------------------------------------------- tests


def test_traefik_accepts_the_gateway_and_the_charts_routes(gateway: Gateway):
    """Traefik wrote the status, as its RBAC lets it: Gateway programmed, every route of the
    chart accepted by it with all backend references resolved."""
    server = gateway.server
    got = json.loads(server.kubectl("-n", gateway.gateway_ns, "get", "gateway", "fissure-gateway",
                                    "-o", "json").stdout)
    assert conditions(got).get("Accepted") == "True", got.get("status")
    assert conditions(got).get("Programmed") == "True", got.get("status")
    for route in gateway.routes:
        kind, name = route["kind"].lower(), route["metadata"]["name"]
        obj = json.loads(server.kubectl("-n", gateway.namespace, "get", kind, name, "-o", "json").stdout)
        parents = obj.get("status", {}).get("parents") or []
        assert parents, f"{kind}/{name} has no status from the gateway"
        for p in parents:
            assert p["controllerName"] == "traefik.io/gateway-controller"
            assert conditions(p).get("Accepted") == "True", p
            assert conditions(p).get("ResolvedRefs") == "True", p


@pytest.mark.parametrize("model", MODELS)
def test_v1_predict_through_the_gateway(gateway: Gateway, model: str):
    """`POST /v1/models/<m>:predict` (Exact in the chart: ":predict" is no path segment)."""
    body = {"instances": [{"b64": base64.b64encode(png(1)).decode()}]}
    r = gateway.post(f"/v1/models/{model}:predict", json=body)
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    if model == "crack-classifier":
        assert set(pred["probabilities"]) == {"no_crack", "crack"}
    else:
        assert "mask_png" in pred and "mask_rle" in pred


def test_a_path_prefix_would_miss_v1_predict(gateway: Gateway):
    """Why the chart's v1 paths are Exact: a PathPrefix /v1/models/<m> route (on a host of its
    own) takes /v1/models/<m> but not /v1/models/<m>:predict, which Traefik answers 404."""
    host = "prefix-probe.fissure.localtest.me"
    probe = next(r for r in gateway.routes if r["kind"] == "HTTPRoute")
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "prefix-probe", "namespace": gateway.namespace},
             "spec": {"parentRefs": probe["spec"]["parentRefs"], "hostnames": [host],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix",
                                                       "value": "/v1/models/crack-classifier"}}],
                                 "backendRefs": [{"name": "fissure-crack-classifier-predictor",
                                                  "port": 80}]}]}}
    apply(gateway.server, [route])
    try:
        deadline = time.monotonic() + 60
        while gateway.get("/v1/models/crack-classifier", host=host).status_code != 200:
            assert time.monotonic() < deadline, "the PathPrefix route never reached the backend"
            time.sleep(1)
        body = {"instances": [{"b64": base64.b64encode(png(1)).decode()}]}
        r = gateway.post("/v1/models/crack-classifier:predict", host=host, json=body)
        assert r.status_code == 404 and r.text.strip() == "404 page not found", r.text
    finally:
        gateway.server.kubectl("-n", gateway.namespace, "delete", "httproute", "prefix-probe")


@pytest.mark.parametrize("model", MODELS)
def test_v2_rest_infer_through_the_gateway(gateway: Gateway, model: str):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(png(2)).decode()]}]}
    r = gateway.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == model
    meta = gateway.get(f"/v2/models/{model}")
    assert meta.status_code == 200 and meta.json()["name"] == model


@pytest.mark.parametrize("model", MODELS)
def test_v2_grpc_through_the_gateway_by_host(gateway: Gateway, model: str):
    """gRPC (h2c to the Service's appProtocol kubernetes.io/h2c port), routed by :authority,
    with fissure's own client (`fissure predict --protocol grpc --grpc-authority`)."""
    from fissure.serving import client

    result = client._grpc(png(3), model, f"127.0.0.1:{gateway.port}", explain=False, timeout=60,
                          authority=f"{model}.{GRPC_SUFFIX}")
    assert result["model_name"] == model


def test_grpc_host_picks_the_backend(gateway: Gateway):
    """The segmenter asked on the classifier's gRPC host reaches the classifier's server, which
    serves only its own model: NOT_FOUND from that backend, not the segmenter's answer."""
    from fissure.errors import NotFoundError
    from fissure.serving import client

    with pytest.raises(NotFoundError):
        client._grpc(png(4), "crack-segmenter", f"127.0.0.1:{gateway.port}", explain=False,
                     timeout=60, authority=f"crack-classifier.{GRPC_SUFFIX}")


def test_grpc_repository_methods_are_not_routed(gateway: Gateway):
    """Only the inference methods are routed: RepositoryIndex gets Traefik's 404 (UNIMPLEMENTED)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(
        f"127.0.0.1:{gateway.port}",
        channel_args=[("grpc.default_authority", f"crack-classifier.{GRPC_SUFFIX}")])
    try:
        assert c.is_model_ready("crack-classifier")  # a routed method on the same channel
        with pytest.raises(InferenceServerException) as err:
            c.get_model_repository_index()
        assert "UNIMPLEMENTED" in (err.value.status() or ""), err.value
    finally:
        c.close()


@pytest.mark.parametrize(("method", "path", "host"), [
    ("POST", "/v1/models/crack-classifier:predictx", HOST),
    ("POST", "/v1/models/crack-classifier/predict", HOST),
    ("POST", "/v1/models/unknown:predict", HOST),
    ("GET", "/v2/repository/index", HOST),
    ("GET", "/v2/health/ready", HOST),
    ("GET", "/metrics", HOST),
    ("POST", "/v2/models/crack-classifier/infer", "other.example.com"),
])
def test_unrouted_requests_get_404(gateway: Gateway, method: str, path: str, host: str):
    """What the chart does not route never reaches a backend: Traefik's own 404."""
    r = httpx.request(method, gateway.url + path, headers={"Host": host}, timeout=30,
                      json={} if method == "POST" else None)
    assert r.status_code == 404, (r.status_code, r.text)
    assert r.text.strip() == "404 page not found"  # Traefik's, not the serving front's JSON


def served(backend: Backend) -> int:
    """Inference requests this backend answered (its own fissure_requests_total, all codes)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{backend.ip}:{backend.http}/metrics", timeout=10).text
    return int(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "fissure_requests_total" and s.labels.get("model") == backend.model))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the test server's own cert
def test_canary_weights_move_traffic_through_the_gateway(gateway: Gateway, backends: dict[str, Backend]):
    """canary.yaml's weighted HTTPRoute through Traefik, its weights moved by the promotion
    controller's own actuator (`fissure promote --actuator kserve-gateway`: a JSON patch, then a
    wait until the Gateway reports the new generation Accepted): 100/0 sends every request to the
    champion's Service, 0/100 every one to the challenger's, and back."""
    from fissure.promotion.kubernetes import (ANN_CHALLENGER_VERSION, ANN_CHAMPION_VERSION, GatewayActuator,
                                              KubeSettings)

    champion, challenger = backends["crack-classifier"], backends["crack-classifier-challenger"]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(png(5)).decode()]}]}

    def infer(n: int) -> tuple[int, int]:
        before = served(champion), served(challenger)
        for _ in range(n):
            r = gateway.post("/v2/models/crack-classifier/infer", host=CANARY_HOST, json=body)
            assert r.status_code == 200, r.text
        return served(champion) - before[0], served(challenger) - before[1]

    def until_challenger_gets(percent: int) -> None:
        """Traefik reports the generation before its new router may take the next request:
        wait (bounded) for the first request on the new weights."""
        deadline = time.monotonic() + 60
        while infer(1) != ((0, 1) if percent == 100 else (1, 0)):
            assert time.monotonic() < deadline, f"traffic did not follow the {percent}% weight in 60s"
            time.sleep(1)

    assert infer(6) == (6, 0)  # the chart's defaults: champion 100, challenger 0
    # what `prepare` leaves on the route once the challenger's InferenceService serves its model
    gateway.server.kubectl("-n", gateway.canary_ns, "annotate", "httproute", "fissure-crack-classifier-canary",
                           f"{ANN_CHAMPION_VERSION}=1", f"{ANN_CHALLENGER_VERSION}=2")
    actuator = GatewayActuator(KubeSettings(namespace=gateway.canary_ns, release="fissure",
                                            kubeconfig=str(gateway.server.kubeconfig), ready_timeout_s=120))
    actuator.set_weight("crack-classifier", 100)
    until_challenger_gets(100)
    assert infer(6) == (0, 6)
    actuator.set_weight("crack-classifier", 0)
    until_challenger_gets(0)
    assert infer(6) == (6, 0)
    state = actuator.state("crack-classifier")
    assert (state.champion_version, state.challenger_version, state.challenger_percent) == ("1", "2", 0)
