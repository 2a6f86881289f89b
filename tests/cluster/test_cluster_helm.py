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
data live on hostPath PersistentVolumes made here (the node has no provisioner). The API and
MLflow are off in values-node.yaml; test_cluster_helm_api.py (opt-in) turns them on.

Part of `make test` (root), on the same node as the other tests in this folder.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request

import pytest
from node_cluster import HELM, MODELS, NODE_VALUES, REPO, png, post_json, run, values_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
NS = "fissure-it"
RELEASE = "fissure"
VALUES = NODE_VALUES


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
    node.images("debian-curl", "postgresql", "minio", "mc")
    env = node.env()
    times: dict[str, float] = {}
    try:
        # the namespace (Pod Security restricted) and the chart's Secrets, as a user makes them
        run(["bash", REPO / "manifests" / "kind" / "secrets.sh", NS], env=env)
        labels = node.get("namespace", NS)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        node.apply(node.host_volume(NS, "postgresql", f"data-{RELEASE}-postgresql-0", 999),  # the chart's uid for it
                   node.host_volume(NS, "minio", f"data-{RELEASE}-minio-0", 1000))  # podSecurityContext's

        helm = [HELM, "--kubeconfig", node.kubeconfig]
        chart = REPO / "charts" / "fissure"
        start = time.monotonic()
        run([*helm, "install", RELEASE, chart, "-n", NS, "-f", VALUES, "--wait", "--timeout", "15m"],
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
        # the test pod resolved the predictors' Service names (CoreDNS), asked each for readiness
        # and ran one v2 inference (curl -f, and its answer has "outputs")
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout

        # helm upgrade to changed values while a client polls v1 predict through the Service
        def predictor_pods(name: str) -> list[dict]:
            return node.get("-n", NS, "pods", "-l", f"serving.kserve.io/inferenceservice={name}")["items"]

        before = {m: predictor_pods(n) for m, n in isvcs.items()}
        poller = Poller(v1_url, v1_body)
        poller.start()
        try:
            time.sleep(5)
            start = time.monotonic()
            run([*helm, "upgrade", RELEASE, chart, "-n", NS, "-f", VALUES, "--wait", "--timeout", "15m",
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
        history = run([*helm, "history", RELEASE, "-n", NS, "-o", "json"], env=env).stdout
        assert [h["status"] for h in json.loads(history)] == ["superseded", "deployed"], history
        run([*helm, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"], env=env, timeout=400)
    finally:
        if times:
            print(f"times (s): { {k: round(v) for k, v in times.items()} }")
        node.delete_namespace(NS)
