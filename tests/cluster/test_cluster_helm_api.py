"""The whole chart on the node (tests/cluster/node_cluster.py): test_cluster_helm.py's install
(KServe, both InferenceServices with their models from s3:// on the chart's MinIO, PostgreSQL)
plus the API and MLflow, every image built here (manifests/cluster/images.sh: `api` and `mlflow`
are the serving image's layers plus one layer with s3fs, boto3 and psycopg2-binary, so
`mlflow.pipPackages: []`).

Shown: `helm install --wait` with `--set api.enabled=true,mlflow.enabled=true` on
manifests/cluster/values-node.yaml; manifests/kind/upload-models.sh; both InferenceServices
Ready; `helm test` (the inference pod and the API pod: /ping, 401 without a token, the UI);
through the API's Service with the admin token from the fissure-api Secret: POST /predict with
an image (the API asks the classifier's predictor by its in-cluster name, stores the prediction
in PostgreSQL and the image on s3://fissure-feedback through s3fs) and the image read back;
MLflow: a run logged from inside the cluster by the Service name (MLflow 3's allowed hosts,
issue 16 item 5), with a parameter in PostgreSQL (psycopg2) and an artifact proxied to MinIO
(boto3), read back; a request by the Service's IP refused (403: the Host guard is on).

Opt-in (FISSURE_TEST_CLUSTER=1, `make test-cluster`): the API and MLflow images' first import
into the node's store (~4 min each: ctr reads the whole 5.7 GB archive), and two more Python
servers on the 2-core node, cost minutes.

Skipped for now (run once on the node, 2026-12-02; stopped while `helm install --wait`
waited): the images import and MinIO, PostgreSQL and the storage initializer work, but
- the API exits at start: `fissure: error: FISSURE_MLFLOW_PORT='tcp://10.96.190.101:5000': Input
  should be a valid integer`: Kubernetes' Service links give every pod of the namespace
  FISSURE_MLFLOW_PORT (and _HOST, _SERVICE_*) for the release `fissure`'s Service
  `fissure-mlflow`, which fissure's settings read as its own (FISSURE_ prefix). Fix in
  charts/fissure/templates/api.yaml: `enableServiceLinks: false` (or settings that ignore them);
- MLflow (the image's mlflow 3.17.2, one uvicorn worker) created its tables in PostgreSQL,
  enabled the allowed-hosts middleware and answered /health, then was OOMKilled at
  values-node.yaml's 1536Mi limit about 25 s later.
The steps after the install (predict through the API, MLflow logging) have not run yet.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
import uuid

import pytest
from node_cluster import HELM, MODELS, NODE_VALUES, REPO, png, run, values_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400),
              # (not xfail: `helm install --wait` would wait its 15 min for the crashing pods first)
              pytest.mark.skip(reason="not yet run to the end: it stopped at the API exiting on FISSURE_MLFLOW_PORT "
                               "from Service links and MLflow OOMKilled at 1536Mi (its job runner), both fixed "
                               "since (settings, the chart); remove after a passing run on the node"),
              pytest.mark.skipif(os.environ.get("FISSURE_TEST_CLUSTER") != "1",
                                 reason="opt-in: FISSURE_TEST_CLUSTER=1 (make test-cluster)")]
NS = "fissure-full-it"
RELEASE = "fissure"

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


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_api_and_mlflow_on_the_node(node):
    node.kserve()
    node.dns()
    start = time.monotonic()
    node.images("debian-curl", "postgresql", "minio", "mc", "api", "mlflow")
    times = {"images (build check + import)": time.monotonic() - start}
    env = node.env()
    token = secrets.token_hex(16)
    try:
        run(["bash", REPO / "manifests" / "kind" / "secrets.sh", NS], env=env)
        node.kubectl("-n", NS, "create", "secret", "generic", "fissure-api", f"--from-literal=admin-token={token}")
        node.apply(node.host_volume(NS, "postgresql", f"data-{RELEASE}-postgresql-0", 999),
                   node.host_volume(NS, "minio", f"data-{RELEASE}-minio-0", 1000))
        helm = [HELM, "--kubeconfig", node.kubeconfig]
        start = time.monotonic()
        run([*helm, "install", RELEASE, REPO / "charts" / "fissure", "-n", NS, "-f", NODE_VALUES, "--wait",
             "--timeout", "15m", "--set", "api.enabled=true", "--set", "mlflow.enabled=true"], env=env, timeout=1000)
        times["helm install --wait (API, MLflow, MinIO, PostgreSQL Ready)"] = time.monotonic() - start
        items = node.get("-n", NS, "inferenceservice", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
        isvcs = {i["metadata"]["labels"]["fissure.dev/model"]: i["metadata"]["name"] for i in items}
        assert set(isvcs) == set(MODELS), isvcs
        node.upload_models(NS, RELEASE, values_image("minio.mcImage"))
        for name in isvcs.values():
            node.wait_isvc_ready(NS, name)
        times["install to both InferenceServices Ready"] = time.monotonic() - start
        node.assert_models_from_s3(NS, isvcs)

        start = time.monotonic()
        tested = run([*helm, "test", RELEASE, "-n", NS, "--timeout", "10m"], env=env, timeout=700)
        times["helm test"] = time.monotonic() - start
        assert f"TEST SUITE:     {RELEASE}-test-api" in tested.stdout, tested.stdout
        assert tested.stdout.count("Phase:          Succeeded") == 2, tested.stdout

        # the API by its Service: a stored prediction, its image read back from s3:// (s3fs)
        svc = node.get("-n", NS, "service", f"{RELEASE}-api")
        api = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
        auth = {"Authorization": f"Bearer {token}"}
        picture = png()
        body, ctype = _multipart({"model": "crack-classifier"}, picture)
        code, out = _http(f"{api}/predict", body, {**auth, "Content-Type": ctype})
        assert code == 201, (code, out[:2000], node.diagnose(NS))
        prediction = json.loads(out)
        assert prediction["model_name"] == "crack-classifier", prediction
        code, got = _http(f"{api}/predictions/{prediction['id']}/image", headers=auth)
        assert code == 200 and got == picture, (code, got[:200])
        code, out = _http(f"{api}/predictions", headers=auth)
        assert code == 200 and json.loads(out)["total"] == 1, (code, out[:2000])

        # MLflow by its Service name from a pod (the API's image has mlflow): PostgreSQL store,
        # artifacts proxied to MinIO
        logged = node.kubectl("-n", NS, "exec", f"deploy/{RELEASE}-api", "--", "python", "-c",
                              MLFLOW_SCRIPT.format(release=RELEASE), timeout=300)
        result = json.loads(logged.stdout.strip().splitlines()[-1])
        assert result["params"] == {"where": "node"}, result
        assert result["text"] == "hello from the node", result
        assert result["artifact_uri"].startswith("mlflow-artifacts:/"), result
        ls = node.kubectl("-n", NS, "exec", f"{RELEASE}-minio-0", "--", "sh", "-c",
                          "ls -R /data/mlflow-artifacts | grep -c hello.txt", check=False)
        assert ls.stdout.strip() not in ("", "0"), (ls.stdout, ls.stderr)
        # and by the Service's IP, a Host MLflow was not told about: refused
        msvc = node.get("-n", NS, "service", f"{RELEASE}-mlflow")
        mlflow_ip = f"http://{msvc['spec']['clusterIP']}:{msvc['spec']['ports'][0]['port']}"
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        code, out = _http(mlflow_ip + search)
        assert code == 403, (code, out[:500])
        code, out = _http(mlflow_ip + search, headers={"Host": f"{RELEASE}-mlflow.{NS}.svc.cluster.local:5000"})
        assert code == 200 and b"node-test" in out, (code, out[:500])
        run([*helm, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"], env=env, timeout=400)
    finally:
        print(f"times (s): { {k: round(v) for k, v in times.items()} }")
        node.delete_namespace(NS)
