"""`make deploy` and `make e2e-kind` on the node (tests/cluster/node_cluster.py): the steps a user
runs against kind, run against this cluster (issue 16: one script, two cluster back-ends).

The node gets what manifests/kind/up.sh gives kind, built here: KServe (kserve-up.sh), CoreDNS,
Argo Workflows (the chart's WorkflowTemplates need its CRDs: `make deploy` sets argo.enabled) and
a Gateway: Traefik as fissure-gateway/fissure-gateway (traefik-up.sh; Envoy Gateway cannot be
built here). Then, as a user:

- `make deploy NAMESPACE=... HELM_ARGS="-f manifests/cluster/values-node.yaml --set
  route.type=gatewayAPI ..."`: secrets.sh (namespace under Pod Security `restricted`), `helm
  upgrade --install --wait` with the deploy target's own settings (image tags, pull policy
  Never, the gateway hosts, the API's route, Argo on), then upload-models.sh into the chart's
  MinIO (MC_IMAGE: the mc image built here; FISSURE_KSERVE_DIR: the two tiny models);
- `make e2e-kind NAMESPACE=...` with GATEWAY_SERVICE=fissure-gateway/traefik: `helm test`, then
  v2 ready and infer, v1 predict (curl) and v2 gRPC (`fissure predict`, the :authority the
  GRPCRoute matches) for both models through a port-forward to the gateway's Service.

Also shown: Traefik accepted the chart's HTTPRoute and GRPCRoutes (their status) and counts them
on the Gateway's listener; a v1 predict straight to Traefik's Service's cluster IP with the REST
host answers, and with another host is Traefik's 404.

Left out on this 2-core node: canary.enabled (two more predictors; the weighted route is shown
through Traefik in test_gateway_traefik.py). The node has no volume provisioner, so the
PersistentVolumes for MinIO's and PostgreSQL's claims are made first (as in test_cluster_helm).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest
from node_cluster import HELM, MODELS, NODE_VALUES, REPO, assert_uploaded, free_ports, png, run, values_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
NS = "fissure-deploy"
RELEASE = "fissure"
HOST = "fissure.localtest.me"  # mk/k8s.mk's GATEWAY_HOST


def _post(url: str, body: dict, host: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Host": host})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _accepted(route: dict) -> bool:
    return any(c["type"] == "Accepted" and c["status"] == "True"
               for parent in route.get("status", {}).get("parents", []) for c in parent.get("conditions", []))


def test_make_deploy_and_e2e_through_the_gateway(node):
    node.kserve()
    node.dns()
    node.argo()
    node.gateway()
    node.images("debian-curl", "postgresql", "minio", "mc", "api", "mlflow")
    node.apply(node.host_volume(NS, "postgresql", f"data-{RELEASE}-postgresql-0", 999),
               node.host_volume(NS, "minio", f"data-{RELEASE}-minio-0", 1000))
    env = node.env(FISSURE_KSERVE_DIR=str(node.staged_models(NS)), MC_IMAGE=values_image("minio.mcImage"))
    times: dict[str, float] = {}
    try:
        start = time.monotonic()
        deployed = run(["make", "--no-print-directory", "deploy", f"NAMESPACE={NS}", f"RELEASE={RELEASE}",
                        f"HELM_ARGS=-f {NODE_VALUES} --set route.type=gatewayAPI --set canary.enabled=false"],
                       cwd=REPO, env=env, timeout=1800)
        times["make deploy"] = time.monotonic() - start
        assert_uploaded(deployed.stdout)
        labels = node.get("namespace", NS)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        items = node.get("-n", NS, "inferenceservice", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
        isvcs = {i["metadata"]["labels"]["fissure.dev/model"]: i["metadata"]["name"] for i in items}
        assert set(isvcs) == set(MODELS), isvcs
        for name in isvcs.values():
            node.wait_isvc_ready(NS, name)
        times["deploy to both InferenceServices Ready"] = time.monotonic() - start
        templates = node.get("-n", NS, "workflowtemplates")["items"]
        assert {"fissure-train", "fissure-retrain"} <= {t["metadata"]["name"] for t in templates}, templates

        # Traefik took the chart's routes and reports the Gateway at its Service
        routes = node.get("-n", NS, "httproutes")["items"] + node.get("-n", NS, "grpcroutes")["items"]
        assert routes and all(_accepted(r) for r in routes), json.dumps([r.get("status") for r in routes])[:3000]
        gateway = node.get("-n", "fissure-gateway", "gateway", "fissure-gateway")
        listener = next(ls for ls in gateway["status"]["listeners"] if ls["name"] == "http")
        assert listener["attachedRoutes"] >= len(routes), gateway["status"]
        svc = node.get("-n", "fissure-gateway", "service", "traefik")
        url = f"http://{svc['spec']['clusterIP']}:80/v1/models/crack-classifier:predict"
        body = {"instances": [{"b64": base64.b64encode(png()).decode()}]}
        code, out = _post(url, body, HOST)
        assert code == 200 and json.loads(out)["predictions"][0]["label"] in ("crack", "no_crack"), (code, out[:500])
        code, out = _post(url, body, "not-fissure.example")
        assert code == 404, (code, out[:300])

        start = time.monotonic()
        (port,) = free_ports(1)
        e2e = run(["make", "--no-print-directory", "e2e-kind", f"NAMESPACE={NS}", f"RELEASE={RELEASE}"], cwd=REPO,
                  env={**env, "GATEWAY_SERVICE": "fissure-gateway/traefik", "E2E_LOCAL_PORT": str(port)}, timeout=1500)
        times["make e2e-kind"] = time.monotonic() - start
        out = e2e.stdout
        assert "Phase:          Succeeded" in out, out
        for model in MODELS:
            assert f">> gRPC v2 infer through the gateway: {model}" in out, out
        assert ">> e2e-kind: REST and gRPC predictions through the gateway succeeded" in out, out
        run([HELM, "--kubeconfig", node.kubeconfig, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"],
            env=env, timeout=400)
    finally:
        print(f"times (s): { {k: round(v) for k, v in times.items()} }")
        node.delete_namespace(NS)
