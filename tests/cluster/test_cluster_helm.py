"""The fissure chart itself on the node (tests/cluster/node_cluster.py), installed as a user
installs it: `helm install --wait` with manifests/cluster/values-node.yaml (every image built here,
pullPolicy Never), into a namespace made by manifests/kind/secrets.sh (Pod Security `restricted`
enforced), with KServe (kserve-up.sh) and the cluster's DNS (coredns.yaml, CoreDNS built here)
running. Both InferenceServices become Ready and answer through their Services, `helm test`
passes, and `helm upgrade` with a changed value (a predictor pod annotation, so KServe rolls both
predictor Deployments over) completes while a client polls v1 predict throughout with no failed
request.

The models come from the chart's default `s3://fissure-models/<model>/champion` URIs on the
chart's own MinIO (server and mc built here from their Go modules, images.sh): the chart's
buckets Job (a post-install hook) makes the buckets, manifests/kind/upload-models.sh (what a user
runs after `make deploy`) streams the packaged models into MinIO through an mc pod and restarts
the predictors, and KServe's storage initializer downloads them with the fissure-s3 Secret's
credentials and endpoint (by the MinIO Service's DNS name). PostgreSQL runs too (Debian's,
images.sh) and answers a password login through its Service's DNS name. MinIO's and PostgreSQL's
data live on hostPath PersistentVolumes made here (the node has no provisioner).

The API and MLflow run too (images.sh `api` and `mlflow`: the serving image's layers plus one
layer with s3fs, boto3 and psycopg2-binary). `helm test` runs the API's test pod as well (/ping,
401 without a token, the UI). Through the API's Service with the admin token from the
fissure-api Secret: POST /predict with an image (the API asks the classifier's predictor by its
in-cluster name, stores the prediction in PostgreSQL and the image on s3://fissure-feedback
through s3fs), the image read back, the list. MLflow: a run logged from inside the cluster by the
Service name (MLflow 3's allowed hosts, issue 16 item 5), its parameter in PostgreSQL
(psycopg2) and its artifact proxied to MinIO (boto3), read back; a request by the Service's IP is
refused (403: the Host guard is on) and one with the Service's DNS name as Host is served.

Monitoring as on a user's cluster with kube-prometheus-stack: the Prometheus Operator and a
Prometheus built here (prometheus-up.sh) select the release's monitors and PrometheusRule (on
with `monitoring.*.enabled=true`, which the chart renders only when the cluster serves the API).
Installed with PodMonitors: every predictor pod (front and TorchServe) and the API scraped once
and up, both rule groups loaded. The upgrade switches to ServiceMonitors (on the predictor
Services KServe makes): the new pods scraped once each through them only, and the SLI recording
rule carries the polling client's traffic.

Part of `make test` (root), on the same node as the other tests in this folder.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from node_cluster import HELM, MODELS, NODE_VALUES, REPO, http, png, post_json, run, values_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
NS = "fissure-it"
RELEASE = "fissure"
VALUES = NODE_VALUES
# the Prometheus Operator on the node (node.prometheus()) serves the API these need; a short
# interval so the check after the upgrade sees the new pods soon
MONITORING = ["--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.interval=10s",
              "--set", "monitoring.scrapeTimeout=5s"]
# installed with PodMonitors, upgraded to ServiceMonitors (on the Services KServe makes)
POD_MONITORS = ["--set", "monitoring.podMonitors.enabled=true"]
SERVICE_MONITORS = ["--set", "monitoring.podMonitors.enabled=false", "--set", "monitoring.serviceMonitors.enabled=true"]

MLFLOW_SCRIPT = """
import json, mlflow
mlflow.set_tracking_uri("http://{release}-mlflow:5000")
mlflow.set_experiment("node-test")
with mlflow.start_run() as run:
    mlflow.log_param("where", "node")
    mlflow.log_text("hello from the node", "notes/hello.txt")
got = mlflow.get_run(run.info.run_id)
text = mlflow.artifacts.load_text(run.info.artifact_uri + "/notes/hello.txt")
print(json.dumps({{"params": got.data.params, "artifact_uri": run.info.artifact_uri, "text": text}}))
"""


class Poller(threading.Thread):
    """POSTs v1 predict to `url` back to back until stopped; keeps every failure."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body = url, json.dumps(body).encode()
        self.ok, self.failures = 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, data=self.body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    answer = json.load(r)
                if answer["predictions"][0]["label"] not in ("crack", "no_crack"):
                    raise ValueError(f"unexpected answer {answer}")
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every kind of failure counts
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
            time.sleep(0.2)


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _check_api(node, token: str) -> None:
    """A prediction through the API's Service: stored (PostgreSQL), its image on s3:// (s3fs)."""
    svc = node.get("-n", NS, "service", f"{RELEASE}-api")
    api = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    auth = {"Authorization": f"Bearer {token}"}
    picture = png()
    body, ctype = _multipart({"model": "crack-classifier"}, picture)
    code, out = http(f"{api}/predict", body, {**auth, "Content-Type": ctype})
    assert code == 201, (code, out[:2000], node.diagnose(NS))
    prediction = json.loads(out)
    assert prediction["model_name"] == "crack-classifier", prediction
    code, got = http(f"{api}/predictions/{prediction['id']}/image", headers=auth)
    assert code == 200 and got == picture, (code, got[:200])
    code, out = http(f"{api}/predictions", headers=auth)
    assert code == 200 and json.loads(out)["total"] == 1, (code, out[:2000])
    code, _ = http(f"{api}/predictions")
    assert code == 401, code


def _check_mlflow(node) -> None:
    """MLflow by its Service name from a pod (the API's image has mlflow): PostgreSQL store,
    artifacts proxied to MinIO; by the Service's IP (a Host it was not told about): refused."""
    logged = node.kubectl("-n", NS, "exec", f"deploy/{RELEASE}-api", "--", "python", "-c",
                          MLFLOW_SCRIPT.format(release=RELEASE), timeout=300)
    result = json.loads(logged.stdout.strip().splitlines()[-1])
    assert result["params"] == {"where": "node"}, result
    assert result["text"] == "hello from the node", result
    assert result["artifact_uri"].startswith("mlflow-artifacts:/"), result
    ls = node.kubectl("-n", NS, "exec", f"{RELEASE}-minio-0", "--", "sh", "-c",
                      "ls -R /data/mlflow-artifacts | grep -c hello.txt", check=False)
    assert ls.stdout.strip() not in ("", "0"), (ls.stdout, ls.stderr)
    msvc = node.get("-n", NS, "service", f"{RELEASE}-mlflow")
    mlflow_ip = f"http://{msvc['spec']['clusterIP']}:{msvc['spec']['ports'][0]['port']}"
    search = "/api/2.0/mlflow/experiments/search?max_results=5"
    code, out = http(mlflow_ip + search)
    assert code == 403, (code, out[:500])
    code, out = http(mlflow_ip + search, headers={"Host": f"{RELEASE}-mlflow.{NS}.svc.cluster.local:5000"})
    assert code == 200 and b"node-test" in out, (code, out[:500])


def _prometheus(url: str, path: str) -> dict:
    code, out = http(url + path)
    assert code == 200, (code, out[:500])
    return json.loads(out)["data"]


def _check_prometheus(node, url: str, kind: str, traffic: bool) -> dict:
    """The operator turned the release's monitors (`kind`: podMonitor or serviceMonitor) and its
    PrometheusRule into Prometheus' config: every Ready predictor pod scraped on 8080 (the
    front) and 8082 (TorchServe) and the API on 8000, each once, all up, through that kind only;
    both rule groups loaded; with `traffic`, the SLI recording rule carrying the clients' requests
    by namespace, model and version (the labels the alerts and dashboards group by)."""
    def ready(selector: str) -> list[str]:
        pods = node.get("-n", NS, "pods", "-l", selector)["items"]
        return [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    deadline, last = time.monotonic() + 300, {}
    while time.monotonic() < deadline:
        # only pods that are Ready: one still starting (a restart's replacement on a loaded
        # node: CI saw one refuse connections for minutes) is rightly a down target
        pods, api = ready("serving.kserve.io/inferenceservice"), ready("app.kubernetes.io/component=api")
        want = sorted({(p, port) for p in pods for port in ("8080", "8082")} | {(p, "8000") for p in api})
        ours = [t for t in _prometheus(url, "/api/v1/targets?state=active")["activeTargets"]
                if t["labels"].get("namespace") == NS and t["labels"].get("pod") in {*pods, *api}]
        scraped = sorted((t["labels"].get("pod"), t["labels"]["instance"].rsplit(":", 1)[1]) for t in ours)
        rules = {g["name"] for g in _prometheus(url, "/api/v1/rules")["groups"]}
        rate = _prometheus(url, "/api/v1/query?query=" + urllib.parse.quote(
            f'namespace_model_version:fissure_requests:rate5m{{namespace="{NS}"}} > 0'))["result"]
        last = {"want": want, "targets": sorted((t["scrapePool"], t["labels"].get("pod"), t["labels"]["instance"],
                                                 t["health"], t["lastError"]) for t in ours),
                "rules": sorted(rules), "rate": rate}
        if (len(pods) >= len(MODELS) and api and scraped == want
                and all(t["health"] == "up" and t["scrapePool"].startswith(f"{kind}/{NS}/") for t in ours)
                and {"fissure-slis", "fissure-alerts"} <= rules
                and (not traffic or "crack-classifier" in {r["metric"].get("model") for r in rate})):
            return last
        time.sleep(5)
    pytest.fail(f"Prometheus did not scrape the release through its {kind}s as expected: {json.dumps(last, indent=1)}")


def _isvc_names(node) -> dict[str, str]:
    items = node.get("-n", NS, "inferenceservice", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    return {i["metadata"]["labels"]["fissure.dev/model"]: i["metadata"]["name"] for i in items}


def _rolled_over(node, deployment: str, key: str, value: str, seconds: int = 900) -> None:
    """Wait until KServe has put the annotation on the predictor Deployment and the rollout is done."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dep = node.get("-n", NS, "deployment", deployment)
        if dep["spec"]["template"]["metadata"].get("annotations", {}).get(key) == value:
            break
        time.sleep(3)
    else:
        pytest.fail(f"KServe did not roll {deployment} over to {key}={value}")
    node.kubectl("-n", NS, "rollout", "status", f"deployment/{deployment}", "--timeout=900s", timeout=960)


def test_helm_install_test_and_upgrade_on_the_node(node):
    node.kserve()
    node.dns()
    node.images("debian-curl", "postgresql", "minio", "mc", "api", "mlflow")
    prometheus = node.prometheus()
    env = node.env()
    times: dict[str, float] = {}
    token = secrets.token_hex(16)
    try:
        # the namespace (Pod Security restricted) and the chart's Secrets, as a user makes them
        run(["bash", REPO / "manifests" / "kind" / "secrets.sh", NS], env=env)
        node.kubectl("-n", NS, "create", "secret", "generic", "fissure-api", f"--from-literal=admin-token={token}")
        labels = node.get("namespace", NS)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        node.apply(node.host_volume(NS, "postgresql", f"data-{RELEASE}-postgresql-0", 999),  # the chart's uid for it
                   node.host_volume(NS, "minio", f"data-{RELEASE}-minio-0", 1000))  # podSecurityContext's

        helm = [HELM, "--kubeconfig", node.kubeconfig]
        chart = REPO / "charts" / "fissure"
        start = time.monotonic()
        run([*helm, "install", RELEASE, chart, "-n", NS, "-f", VALUES, *MONITORING, *POD_MONITORS, "--wait", "--timeout", "15m"],
            env=env, timeout=1000)
        times["helm install --wait"] = time.monotonic() - start
        isvcs = _isvc_names(node)
        assert set(isvcs) == set(MODELS), isvcs
        for name in isvcs.values():
            isvc = node.get("-n", NS, "inferenceservice", name)
            assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith("s3://fissure-models/"), isvc["spec"]
        # the buckets Job (post-install hook, deleted when it succeeded) made fissure-models; now
        # the user's step: upload-models.sh streams each packaged model's files into MinIO with
        # `mc pipe` in an mc pod and restarts the predictors (the first ones found no model)
        node.upload_models(NS, RELEASE, values_image("minio.mcImage"))
        times["upload-models.sh"] = time.monotonic() - start - times["helm install --wait"]
        for name in isvcs.values():
            node.wait_isvc_ready(NS, name)
        times["install to both InferenceServices Ready"] = time.monotonic() - start
        node.assert_models_from_s3(NS, isvcs)
        # PostgreSQL (helm --wait waited for its StatefulSet): initialised from the chart's Secret,
        # a password login over TCP to its Service's DNS name
        login = node.kubectl("-n", NS, "exec", f"{RELEASE}-postgresql-0", "--", "sh", "-c",
                             'PGPASSWORD="$POSTGRES_PASSWORD" psql -h ' f"{RELEASE}-postgresql.{NS}.svc.cluster.local"
                             ' -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "select current_user, current_database()"')
        assert login.stdout.strip() == "mlflow|mlflow", login.stdout

        b64 = base64.b64encode(png()).decode()
        clf = node.service(NS, isvcs["crack-classifier"])
        v1_url = f"http://{clf}/v1/models/crack-classifier:predict"
        v1_body = {"instances": [{"b64": b64}]}
        pred = post_json(v1_url, v1_body)["predictions"][0]
        assert pred["label"] in ("crack", "no_crack"), pred
        seg = node.service(NS, isvcs["crack-segmenter"])
        answer = post_json(f"http://{seg}/v2/models/crack-segmenter/infer",
                           {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]})
        assert {o["name"] for o in answer["outputs"]} >= {"mask_png", "crack_ratio"}, answer

        start = time.monotonic()
        # (no --logs: the chart's test pods are deleted on success, hook-delete-policy hook-succeeded,
        # and `helm test --logs` then fails with "unable to get pod logs ... not found")
        tested = run([*helm, "test", RELEASE, "-n", NS, "--timeout", "10m"], env=env, timeout=700)
        times["helm test"] = time.monotonic() - start
        # the inference test pod resolved the predictors' Service names (CoreDNS), asked each for
        # readiness and ran one v2 inference (curl -f, and its answer has "outputs"); the API's
        # asked /ping, a write without a token (401) and the UI
        assert f"TEST SUITE:     {RELEASE}-test-api" in tested.stdout, tested.stdout
        assert tested.stdout.count("Phase:          Succeeded") == 2, tested.stdout
        start = time.monotonic()
        _check_api(node, token)
        _check_mlflow(node)
        times["API predict + MLflow run"] = time.monotonic() - start
        start = time.monotonic()
        scraped = _check_prometheus(node, prometheus, "podMonitor", traffic=False)
        times["Prometheus scraping through the PodMonitors"] = time.monotonic() - start
        print(f"prometheus (PodMonitors): {json.dumps(scraped)}")

        # helm upgrade to changed values while a client polls v1 predict through the Service
        def predictor_pods(name: str) -> list[dict]:
            return node.get("-n", NS, "pods", "-l", f"serving.kserve.io/inferenceservice={name}")["items"]

        before = {m: predictor_pods(n) for m, n in isvcs.items()}
        poller = Poller(v1_url, v1_body)
        poller.start()
        try:
            time.sleep(5)
            start = time.monotonic()
            run([*helm, "upgrade", RELEASE, chart, "-n", NS, "-f", VALUES, *MONITORING, *SERVICE_MONITORS, "--wait", "--timeout", "15m",
                 "--set-string", "serving.podAnnotations.fissure\\.dev/rollout=2"], env=env, timeout=1000)
            for name in isvcs.values():
                _rolled_over(node, f"{name}-predictor", "fissure.dev/rollout", "2")
                node.wait_isvc_ready(NS, name)
            times["helm upgrade to both predictors rolled over"] = time.monotonic() - start
            time.sleep(20)  # the old pods' preStop and drain, and kube-proxy's rules, settle under load
        finally:
            poller.stop.set()
            poller.join(timeout=60)
        after = {m: predictor_pods(n) for m, n in isvcs.items()}
        for model in MODELS:
            old = {p["metadata"]["name"] for p in before[model]}
            new = [p for p in after[model] if p["metadata"]["name"] not in old]
            assert new, f"{model}: no new predictor pod after the upgrade"
            assert all(p["metadata"]["annotations"].get("fissure.dev/rollout") == "2" for p in new), new
        print(f"poller: {poller.ok} answers, {len(poller.failures)} failures; times: {json.dumps(times)}")
        assert poller.ok > 10, poller.ok
        assert not poller.failures, poller.failures[:20]
        start = time.monotonic()
        scraped = _check_prometheus(node, prometheus, "serviceMonitor", traffic=True)
        times["Prometheus scraping the new pods through the ServiceMonitors"] = time.monotonic() - start
        print(f"prometheus (ServiceMonitors): {json.dumps(scraped)}")
        history = run([*helm, "history", RELEASE, "-n", NS, "-o", "json"], env=env).stdout
        assert [h["status"] for h in json.loads(history)] == ["superseded", "deployed"], history
        run([*helm, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"], env=env, timeout=400)
    finally:
        if times:
            print(f"times (s): { {k: round(v) for k, v in times.items()} }")
        node.delete_namespace(NS)
