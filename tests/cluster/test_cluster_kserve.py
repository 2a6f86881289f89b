"""KServe for real on the node (tests/cluster/node_cluster.py): images built here (no registry),
KServe's controller from its Go module with webhook certificates made by kserve-up.sh, and the
chart's ServingRuntimes and both InferenceServices in a namespace with Pod Security `restricted`
enforced: the classifier over http:// through KServe's storage initializer (built here too,
injected as an init container), the segmenter from a hostPath PersistentVolume (`pvc://`, mounted
directly). Both become Ready and answer through their cluster Services: v1 predict (classifier),
v2 REST and v2 gRPC infer (segmenter). KServe's llmisvc controller runs too (built here), and
kserve-cluster-resources.yaml goes in through its webhooks, as up.sh applies it on kind.

Part of `make test` (root). Cold, the images take tens of minutes to build (the serving image's
Python environment with torch, KServe's controller); warm, a hash check, and the image store is
kept between runs (docs/cluster.md has the times).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from kube_cluster import REPO, UPSTREAM
from node_cluster import HELM, MODELS, SERVING_IMAGE, TAG, free_ports, host_ip, png, post_json, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]
NS = "fissure-kserve"


def _chart_objects(version: str, uris: dict[str, str]) -> tuple[dict[str, str], str]:
    """The chart's ServingRuntimes, serving ServiceAccount and both InferenceServices,
    pointed at the local image (pullPolicy Never) and the models' URIs: ({model: the
    InferenceService's name, which may carry the release's prefix}, the objects as YAML)."""
    sets = {
        "servingRuntime.image.registry": "ghcr.io", "servingRuntime.image.repository": "fissure/fissure-serving",
        "servingRuntime.image.tag": TAG, "servingRuntime.image.pullPolicy": "Never",
        "servingRuntime.resources.requests.cpu": "250m", "servingRuntime.resources.requests.memory": "1Gi",
        **{f"models.{m}.storageUri": uri for m, uri in uris.items()},
        "serving.storage.existingSecret": "",
        "route.type": "none",
    }
    args = [str(HELM), "template", "fissure", str(REPO / "charts" / "fissure"), "--namespace", NS,
            "--kube-version", version.lstrip("v"),
            "--api-versions", "serving.kserve.io/v1beta1", "--api-versions", "serving.kserve.io/v1alpha1"]
    for k, v in sets.items():
        args += ["--set-string" if k.endswith("tag") else "--set", f"{k}={v}"]
    rendered = run(args).stdout
    keep = [d for d in yaml.safe_load_all(rendered) if d and (
        d["kind"] in ("ServingRuntime", "InferenceService")
        or (d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-serving")))]
    assert {d["kind"] for d in keep} >= {"ServingRuntime", "InferenceService"}, rendered[:2000]
    isvcs = {d["metadata"]["labels"]["fissure.dev/model"]: d["metadata"]["name"]
             for d in keep if d["kind"] == "InferenceService"}
    assert set(isvcs) == set(MODELS), isvcs
    return isvcs, yaml.safe_dump_all(keep)


@contextlib.contextmanager
def _http_server(directory: Path, host: str):
    """Serve `directory` over plain HTTP on host:<free port> (the storage initializer's source)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, free_ports(1, host)[0]), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_inferenceservices_ready_and_answer_on_the_node(node, tmp_path):
    node.kserve()
    models = node.models()
    node.namespace(NS)
    node.apply(*node.models_volume(NS))
    try:
        # the classifier comes over http:// through KServe's storage initializer (an archive it
        # unpacks), the segmenter from the PersistentVolume (pvc://, mounted, no init container)
        www = tmp_path / "www"
        www.mkdir()
        with tarfile.open(www / "models.tar.gz", "w:gz") as archive:
            for part in ("model-store", "config"):
                archive.add(models / part, arcname=part)
        with _http_server(www, host_ip()) as base_url:
            isvcs, objects = _chart_objects(node.version, {"crack-classifier": f"{base_url}/models.tar.gz",
                                                           "crack-segmenter": "pvc://fissure-models/"})
            node.kubectl("apply", "--server-side", "-f", "-", input=objects)
            for name in isvcs.values():
                node.wait_isvc_ready(NS, name)
        pods = {model: node.get("-n", NS, "pods", "-l", f"serving.kserve.io/inferenceservice={name}")["items"][0]
                for model, name in isvcs.items()}
        for pod in pods.values():
            assert pod["spec"]["containers"][0]["image"] == SERVING_IMAGE
        assert not pods["crack-segmenter"]["spec"].get("initContainers"), "pvc:// needs no storage initializer"
        # the injected storage initializer: the local image, admitted by Pod Security restricted, done
        (init,) = pods["crack-classifier"]["spec"]["initContainers"]
        assert init["image"] == "fissure.local/kserve-storage-initializer:v0.20.0"
        assert init["securityContext"]["runAsNonRoot"] is True
        (status,) = pods["crack-classifier"]["status"]["initContainerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == 0, status

        # through each predictor's cluster Service (kube-proxy routes the ClusterIP)
        try:
            _infer(node, isvcs)
        except BaseException:
            print(node.diagnose(NS))  # pytest shows who answered what with the failure
            raise
    finally:
        node.delete_namespace(NS)


def test_cluster_resources_go_through_the_llmisvc_webhooks(node):
    """kserve-up.sh applied kserve-cluster-resources.yaml once the webhooks answered (issue 16,
    item 7: applied too early, the LLMInferenceServiceConfigs are refused); the webhooks and the
    CRDs' conversion webhook are live, not just registered."""
    node.kserve()
    upstream = UPSTREAM / "kserve-v0.20.0" / "kserve-cluster-resources.yaml"
    if not upstream.is_file():
        pytest.skip(f"KServe's pinned cluster resources are not at {upstream} (../shared/k8s-upstream)")
    want: dict[str, set[str]] = {}
    for d in yaml.safe_load_all(upstream.read_text()):
        if d:
            want.setdefault(d["kind"], set()).add(d["metadata"]["name"])
    assert len(want["LLMInferenceServiceConfig"]) == 10 and len(want["ClusterServingRuntime"]) == 14, want
    deploy = node.get("-n", "kserve", "deployment", "llmisvc-controller-manager")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "fissure.local/llmisvc-controller:v0.20.0"
    assert deploy["status"].get("availableReplicas") == 1, deploy["status"]
    stored = node.get("-n", "kserve", "llminferenceserviceconfigs.v1alpha2.serving.kserve.io")["items"]
    assert {d["metadata"]["name"] for d in stored} == want["LLMInferenceServiceConfig"]
    runtimes = node.get("clusterservingruntimes")["items"]
    assert want["ClusterServingRuntime"] <= {d["metadata"]["name"] for d in runtimes}
    # v1alpha1 is served from the stored v1alpha2 through the conversion webhook (needs its CA)
    old = node.get("-n", "kserve", "llminferenceserviceconfigs.v1alpha1.serving.kserve.io")["items"]
    assert {d["metadata"]["name"] for d in old} == want["LLMInferenceServiceConfig"]
    assert {d["apiVersion"] for d in old} == {"serving.kserve.io/v1alpha1"}
    # the validating webhook answers: a well-known config may not be deleted...
    name = "kserve-config-llm-template"
    assert name in want["LLMInferenceServiceConfig"]
    refused = node.kubectl("-n", "kserve", "delete", "llminferenceserviceconfig", name, "--dry-run=server", check=False)
    assert refused.returncode != 0 and "cannot be deleted" in refused.stderr, refused.stderr
    # ...and a config with baseRefs is refused on create
    bad = {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceServiceConfig",
           "metadata": {"name": "fissure-probe", "namespace": "kserve"}, "spec": {"baseRefs": [{"name": name}]}}
    refused = node.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "baseRefs is not a permitted field" in refused.stderr, refused.stderr


def _infer(node, isvcs: dict[str, str]) -> None:
    """v1 REST to the classifier, v2 REST and v2 gRPC to the segmenter, each through its Service."""
    image = png()
    b64 = base64.b64encode(image).decode()
    clf = node.service(NS, isvcs["crack-classifier"])
    answer = post_json(f"http://{clf}/v1/models/crack-classifier:predict", {"instances": [{"b64": b64}]})
    pred = answer["predictions"][0]
    assert pred["label"] in ("crack", "no_crack"), answer
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4, answer
    seg = node.service(NS, isvcs["crack-segmenter"])
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}
    answer = post_json(f"http://{seg}/v2/models/crack-segmenter/infer", body)
    assert {o["name"] for o in answer["outputs"]} >= {"mask_png", "crack_ratio"}, answer
    # v2 gRPC on the Service's h2c port
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"{seg.split(':')[0]}:8081")
    assert client.is_model_ready("crack-segmenter")
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object))
    ratio = float(client.infer("crack-segmenter", [inp]).as_numpy("crack_ratio")[0])
    assert 0.0 <= ratio <= 1.0
