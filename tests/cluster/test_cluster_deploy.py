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
host answers, and with another host is Traefik's 404. Then `helm upgrade --set route.type=ingress`
swaps the routes for the chart's Ingresses, which the same Traefik serves as the cluster's Ingress
controller (IngressClass `traefik`): v1 predict (the ImplementationSpecific path, which must take in
`<name>:predict`), v2 ready and infer, and the API's host.

Then the retraining the chart installed runs on the release as a user starts it (docs/retraining.md):
a `fissure-retrain` Workflow (promote=false, min-feedback=0) from the chart's WorkflowTemplate, its
source this repository's committed tree with tiny params (`git daemon` on the node's address: the
chart's argo.repo), its image the training image built here (images.sh training). It ingests the
feedback from the release's PostgreSQL, trains with `dvc repro` and pushes to the DVC remote on the
release's MinIO, registers both models in the release's MLflow, gates each and puts the MAR of
each that passed into the model store (s3://fissure-models/<model>/<version>), all under Pod
Security `restricted`.

Left out on this 2-core node: canary.enabled (two more predictors; the weighted route is shown
through Traefik in test_gateway_traefik.py) and so the retraining's promote step (a canary judged
by Prometheus: tests/promotion). The node has no volume provisioner, so the PersistentVolumes for
MinIO's and PostgreSQL's claims and the workflow's workspace are made first (as in test_cluster_helm).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from node_cluster import (HELM, MODELS, NODE_VALUES, REPO, NodeCluster, assert_uploaded, background, free_ports,
                          git_daemon_command, host_ip, http, png, run, source_repo, values_image)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
NS = "fissure-deploy"
RELEASE = "fissure"
HOST = "fissure.localtest.me"  # mk/k8s.mk's GATEWAY_HOST
RETRAIN = "fissure-retrain-node"  # a fixed name: its workspace claim is <name>-work (the PV made for it)


def _accepted(route: dict) -> bool:
    return any(c["type"] == "Accepted" and c["status"] == "True"
               for parent in route.get("status", {}).get("parents", []) for c in parent.get("conditions", []))


def test_make_deploy_e2e_through_the_gateway_and_retrain(node, tmp_path):
    node.kserve()
    node.dns()
    node.argo()
    node.gateway()
    node.images("debian-curl", "postgresql", "minio", "mc", "api", "mlflow", "training")
    node.apply(node.host_volume(NS, "postgresql", f"data-{RELEASE}-postgresql-0", 999),
               node.host_volume(NS, "minio", f"data-{RELEASE}-minio-0", 1000),
               node.host_volume(NS, "work", f"{RETRAIN}-work", 1000))
    host = host_ip()
    (git_port,) = free_ports(1, host)
    repo = source_repo(tmp_path / "git")
    env = node.env(FISSURE_KSERVE_DIR=str(node.staged_models(NS)), MC_IMAGE=values_image("minio.mcImage"))
    times: dict[str, float] = {}
    try:
        start = time.monotonic()
        deployed = run(["make", "--no-print-directory", "deploy", f"NAMESPACE={NS}", f"RELEASE={RELEASE}",
                        f"HELM_ARGS=-f {NODE_VALUES} --set route.type=gatewayAPI --set canary.enabled=false "
                        f"--set argo.repo=git://{host}:{git_port}/{repo.name}"],
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
        data = json.dumps(body).encode()
        code, out = http(url, data, {"Content-Type": "application/json", "Host": HOST})
        assert code == 200 and json.loads(out)["predictions"][0]["label"] in ("crack", "no_crack"), (code, out[:500])
        code, out = http(url, data, {"Content-Type": "application/json", "Host": "not-fissure.example"})
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

        start = time.monotonic()
        _ingress_instead_of_routes(node, env, f"http://{svc['spec']['clusterIP']}:80", data)
        times["route.type=ingress"] = time.monotonic() - start

        start = time.monotonic()
        with background(git_daemon_command(repo, host, git_port), tmp_path / "git-daemon.log", host, git_port):
            _retrain_and_check(node)
        times["fissure-retrain"] = time.monotonic() - start
        run([HELM, "--kubeconfig", node.kubeconfig, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"],
            env=env, timeout=400)
    finally:
        print(f"times (s): { {k: round(v) for k, v in times.items()} }")
        node.delete_namespace(NS)


def _ingress_instead_of_routes(node: NodeCluster, env: dict, traefik: str, classify: bytes) -> None:
    """`helm upgrade --set route.type=ingress`: the chart's Ingresses replace its HTTPRoutes, and
    Traefik's Ingress provider (IngressClass `traefik`) serves v1 predict (ImplementationSpecific:
    the `<name>:predict` segment), v2 infer (Prefix) and the API under their hosts."""
    run([HELM, "--kubeconfig", node.kubeconfig, "upgrade", RELEASE, str(REPO / "charts" / "fissure"), "-n", NS,
         "--reuse-values", "--set", "route.type=ingress", "--set", "route.ingress.className=traefik",
         "--set", "route.grpc=false", "--wait", "--timeout", "5m"], env=env, timeout=400)
    assert not node.get("-n", NS, "httproutes")["items"], "the HTTPRoutes outlived route.type=ingress"
    ingresses = node.get("-n", NS, "ingresses")["items"]
    assert {i["spec"]["ingressClassName"] for i in ingresses} == {"traefik"}, ingresses
    hosts = {r["host"] for i in ingresses for r in i["spec"]["rules"]}
    assert {HOST, f"api.{HOST}"} <= hosts, hosts
    json_type = {"Content-Type": "application/json"}
    deadline = time.monotonic() + 120  # Traefik picks the Ingresses up from its watch
    while True:
        code, out = http(f"{traefik}/v1/models/crack-classifier:predict", classify, {**json_type, "Host": HOST})
        if code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 200 and json.loads(out)["predictions"][0]["label"] in ("crack", "no_crack"), (code, out[:500])
    image = json.loads(classify)["instances"][0]["b64"]
    infer = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}
    for model in MODELS:
        code, out = http(f"{traefik}/v2/models/{model}/ready", None, {"Host": HOST})
        assert code == 200, (model, code, out[:300])
    code, out = http(f"{traefik}/v2/models/crack-classifier/infer", json.dumps(infer).encode(), {**json_type, "Host": HOST})
    assert code == 200 and json.loads(out)["model_name"] == "crack-classifier", (code, out[:500])
    code, out = http(f"{traefik}/ping", None, {"Host": f"api.{HOST}"})
    assert code == 200, (code, out[:300])
    code, _ = http(f"{traefik}/v1/models/crack-classifier:predict", classify, {**json_type, "Host": "not-fissure.example"})
    assert code == 404, code


def _retrain_and_check(node: NodeCluster) -> None:
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"name": RETRAIN, "namespace": NS},
                "spec": {"workflowTemplateRef": {"name": "fissure-retrain"},
                         "arguments": {"parameters": [{"name": "min-feedback", "value": "0"},
                                                      {"name": "promote", "value": "false"}]}}}
    node.kubectl("create", "-f", "-", input=json.dumps(workflow))
    wf, pods, took = node.wait_workflow(NS, RETRAIN, seconds=2400)
    print(f"\n{RETRAIN} Succeeded in {took:.0f}s")

    # each step ran (or was skipped) as the DAG says: gate per model, package what passed, no promote
    steps: dict[str, list[dict]] = {}
    for n in wf["status"]["nodes"].values():
        if n.get("type") in ("Pod", "Skipped"):
            steps.setdefault(n["templateName"], []).append(n)
    assert [n["phase"] for n in steps["ingest"]] == ["Succeeded"], steps["ingest"]
    assert [n["phase"] for n in steps["train"]] == ["Succeeded"], steps["train"]
    assert len(steps["gate"]) == len(MODELS) and all(n["phase"] == "Succeeded" for n in steps["gate"]), steps["gate"]
    assert all(n["phase"] == "Skipped" for n in steps.get("promote", [])), steps.get("promote")

    def outputs(n: dict) -> dict[str, str]:
        return {p["name"]: p.get("value", "") for p in n.get("outputs", {}).get("parameters", [])}

    ingest = outputs(steps["ingest"][0])
    assert ingest["due"] == "true", ingest
    # TINY_PARAMS' gate lets the one-epoch models through: both are packaged
    decisions = [outputs(n) for n in steps["gate"]]
    assert all(d["decision"] == "passed" and d["challenger-version"] for d in decisions), decisions
    packaged = [outputs(n)["storage-uri"] for n in steps["package"] if n["phase"] == "Succeeded"]
    assert sorted(Path(uri.removeprefix("s3://")).parts[1] for uri in packaged) == sorted(MODELS), packaged

    # both models registered in the release's MLflow (asked from its own pod: localhost is an allowed host)
    search = ("import json, urllib.request; r = urllib.request.urlopen('http://localhost:5000/api/2.0/mlflow/"
              "registered-models/search?max_results=100'); print(json.dumps(json.load(r)))")
    got = node.kubectl("-n", NS, "exec", f"deploy/{RELEASE}-mlflow", "--", "python", "-c", search)
    registered = {m["name"]: m for m in json.loads(got.stdout).get("registered_models", [])}
    assert set(MODELS) <= set(registered), registered
    for model in MODELS:
        assert any(v["status"] == "READY" for v in registered[model].get("latest_versions", [])), registered[model]

    # the MAR of each model that passed is in the model store, as KServe's TorchServe layout
    import s3fs

    secret = node.get("-n", NS, "secret", f"{RELEASE}-minio")["data"]
    svc = node.get("-n", NS, "service", f"{RELEASE}-minio")["spec"]["clusterIP"]
    fs = s3fs.S3FileSystem(key=base64.b64decode(secret["root-user"]).decode(),
                           secret=base64.b64decode(secret["root-password"]).decode(),
                           client_kwargs={"endpoint_url": f"http://{svc}:9000"})
    for uri in packaged:
        model = Path(uri.removeprefix("s3://")).parts[1]
        assert uri.startswith(f"s3://fissure-models/{model}/"), uri
        assert fs.isfile(f"{uri}/model-store/{model}.mar") and fs.isfile(f"{uri}/config/config.properties"), \
            fs.find(uri)
    # the DVC remote on MinIO got what `dvc push` sent
    assert fs.find("s3://fissure-dvc"), "nothing in the DVC remote s3://fissure-dvc"
    for pod in pods:  # Pod Security `restricted` admitted every step with Argo's init and wait containers
        assert {c["name"] for c in pod["spec"]["containers"]} == {"wait", "main"}, pod["spec"]["containers"]
