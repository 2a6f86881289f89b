"""The front's /metrics: requests by protocol and code, batches, model behaviour and drift.

One real front (`fissure serve --runtime inprocess`, the serving suite's tiny models) on free
ports; the classifier's spec carries a reference profile built here from normal images, the
segmenter's none. Each test scrapes before and after its own traffic and checks the difference,
so the tests do not depend on each other's order. gRPC runs in a subprocess (tritonclient's
protos and kserve's clash in one process).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fissure.observability import catalog
from fissure.observability.drift import Profile, input_stats

pytestmark = pytest.mark.slow
CLF, SEG = "crack-classifier", "crack-segmenter"
SERVING = Path(__file__).resolve().parents[1] / "serving"


def _serving_conftest():
    """The serving suite's helpers (tiny models, `_serve`, images): conftest modules cannot be
    imported by name under --import-mode=importlib, so it is loaded from its path."""
    name = "fissure_tests_serving_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVING / "conftest.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
        spec.loader.exec_module(module)
    return sys.modules[name]


serving = _serving_conftest()
built_models = serving.built_models  # the session fixture: two tiny models packaged into MARs
Images = serving.Images
WINDOW = 60  # FISSURE_DRIFT_WINDOW of this front: a window this size is full after one batch
MAX_BODY = 2_000_000  # FISSURE_MAX_BODY_BYTES: a 413 without sending much


# ---------------------------------------------------------------------------- the front


def normal(seed: int) -> bytes:
    return Images.png(seed=seed)


def dark(seed: int) -> bytes:
    """The same scenes at a sixth of the light: what a camera at dusk would send."""
    arr = np.asarray(Images.crack(seed=seed), dtype=np.float32) / 6
    return Images.encode(Image.fromarray(arr.astype(np.uint8)))


def _mar_files(mar: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(mar) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _reference_profile(mar: Path, tmp: Path) -> dict:
    """As training makes it: input statistics and the model's confidences on normal images."""
    from fissure.preprocess import decode_image, image_to_array
    from fissure.serving.runtime import ModelRuntime

    model_dir = tmp / "profiled"
    model_dir.mkdir()
    for name, data in _mar_files(mar).items():
        if name in ("weights.pt", "spec.json", "fissure-model.json"):
            (model_dir / name).write_bytes(data)
    runtime = ModelRuntime.from_dir(model_dir)
    pngs = [normal(1000 + s) for s in range(120)]
    samples: dict[str, list[float]] = {}
    for png in pngs:
        img = decode_image(png)
        for k, v in input_stats(image_to_array(img, runtime.cfg), (img.height, img.width)).items():
            samples.setdefault(k, []).append(v)
    samples["confidence"] = [r["score"] for r in runtime.predict([runtime.prepare_image(p) for p in pngs])]
    return Profile.from_samples(samples).to_dict()


def _with_profile(mar: Path, profile: dict) -> None:
    files = _mar_files(mar)
    spec = json.loads(files["spec.json"])
    spec["reference_profile"] = profile
    files["spec.json"] = json.dumps(spec).encode()
    with zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def front(built_models, tmp_path_factory):
    base, models, env = built_models
    mine = tmp_path_factory.mktemp("front-metrics")
    shutil.copytree(base / "out", mine / "out")
    mar = mine / "out" / "model-store" / f"{CLF}.mar"
    _with_profile(mar, _reference_profile(mar, mine))
    yield from serving._serve((mine, models, env), "metrics", "inprocess",
                              {"FISSURE_DRIFT_WINDOW": str(WINDOW), "FISSURE_MAX_BODY_BYTES": str(MAX_BODY)})


# ---------------------------------------------------------------------------- scraping


class Scrape:
    """One /metrics scrape: sample values by name and labels."""

    def __init__(self, text: str):
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(self, name: str, **labels) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(s.value for s in self.find(name, **labels))

    def find(self, name: str, **labels) -> list:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def scrape(srv) -> Scrape:
    r = httpx.get(srv.url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    return Scrape(r.text)


def delta(before: Scrape, after: Scrape, name: str, **labels) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def outputs(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return {o["name"]: o["data"] for o in resp.json()["outputs"]}


def v1(images: list[bytes]) -> dict:
    return {"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}


def v2(images: list[bytes]) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(b).decode() for b in images]}]}


GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, calls = sys.argv[1], json.loads(sys.argv[2])
client = grpcclient.InferenceServerClient(url)
out = []
for model, items in calls:
    inp = grpcclient.InferInput("image", [len(items)], "BYTES")
    inp.set_data_from_numpy(np.array([bytes.fromhex(x) for x in items], dtype=np.object_))
    try:
        client.infer(model, [inp])
        out.append("OK")
    except InferenceServerException as exc:
        out.append(exc.status().split(".")[-1])
client.close()
print(json.dumps(out))
"""


def grpc_calls(srv, calls: list[tuple[str, list[bytes]]]) -> list[str]:
    """Run tritonclient in its own process; each call's gRPC status code name."""
    arg = json.dumps([[m, [b.hex() for b in items]] for m, items in calls])
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, srv.grpc, arg], capture_output=True, text=True,
                          timeout=120, env=srv.env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- tests


def test_requests_counted_by_model_protocol_and_code(front):
    srv, clf_v, seg_v = front, front.models["classifier"]["version"], front.models["segmenter"]["version"]
    sent: Counter = Counter()  # (model label, version, protocol, code) the clients saw

    def rest(model, protocol, path, **kw):
        r = httpx.post(srv.url + path, timeout=60, **kw)
        version = {CLF: clf_v, SEG: seg_v}.get(model, "")
        sent[(model if version else "unknown", version, protocol, str(r.status_code))] += 1
        return r

    before = scrape(srv)
    assert rest(CLF, "rest-v1", f"/v1/models/{CLF}:predict", json=v1([normal(1)])).status_code == 200
    assert rest(CLF, "rest-v1", f"/v1/models/{CLF}:predict", content=normal(2),
                headers={"Content-Type": "image/png"}).status_code == 200
    assert rest(SEG, "rest-v1", f"/v1/models/{SEG}:predict", json=v1([normal(3), normal(4)])).status_code == 200
    assert rest(CLF, "rest-v1", f"/v1/models/{CLF}:explain", json=v1([normal(5)])).status_code == 200
    assert rest(CLF, "rest-v2", f"/v2/models/{CLF}/infer", json=v2([normal(6), normal(7)])).status_code == 200
    assert rest(SEG, "rest-v2", f"/v2/models/{SEG}/versions/{seg_v}/infer", json=v2([normal(8)])).status_code == 200
    # bad input: 4xx, still counted under the model it was for
    assert rest(CLF, "rest-v2", f"/v2/models/{CLF}/infer", content=b'{"inputs": [',
                headers={"Content-Type": "application/json"}).status_code == 400
    bad_image = rest(SEG, "rest-v1", f"/v1/models/{SEG}:predict", json=v1([b"not an image"])).status_code
    assert bad_image in (400, 415)
    assert rest(SEG, "rest-v2", f"/v2/models/{SEG}/versions/999/infer", json=v2([normal(9)])).status_code == 404
    assert rest(CLF, "rest-v2", f"/v2/models/{CLF}/infer", content=b"x" * (MAX_BODY + 1),
                headers={"Content-Type": "application/json"}).status_code == 413
    # names the front does not serve share one series: a typo must not add series
    assert rest("no-such-model", "rest-v2", "/v2/models/no-such-model/infer", json=v2([normal(1)])).status_code == 404
    assert rest("other-model", "rest-v1", "/v1/models/other-model:predict", json=v1([normal(1)])).status_code == 404
    statuses = grpc_calls(srv, [(CLF, [normal(10)]), (SEG, [normal(11), normal(12)]), (SEG, [b"not an image"]),
                                ("no-such-model", [normal(13)])])
    assert statuses == ["OK", "OK", "INVALID_ARGUMENT", "NOT_FOUND"]
    # a gRPC answer counts under the HTTP status its error has on REST (fissure.errors.status_of)
    for model, code in zip((CLF, SEG, SEG, "unknown"), (200, 200, bad_image, 404)):
        sent[(model, {CLF: clf_v, SEG: seg_v}.get(model, ""), "grpc", str(code))] += 1
    after = scrape(srv)

    name = catalog.REQUESTS.series
    seen = {(s.labels["model"], s.labels["version"], s.labels["protocol"], s.labels["code"]): s.value
            for s in after.find(name)}
    got = {k: v - before.value(name, model=k[0], version=k[1], protocol=k[2], code=k[3]) for k, v in seen.items()}
    assert {k: v for k, v in got.items() if v} == dict(sent)
    assert {s.labels["model"] for s in after.find(name)} <= {CLF, SEG, "unknown"}
    for (model, version, protocol) in {k[:3] for k in sent}:
        n = sum(v for k, v in sent.items() if k[:3] == (model, version, protocol))
        assert delta(before, after, catalog.LATENCY.name + "_count", model=model, version=version,
                     protocol=protocol) == n, (model, protocol)
        assert after.value(catalog.LATENCY.name + "_bucket", model=model, version=version, protocol=protocol,
                           le="+Inf") == after.value(catalog.LATENCY.name + "_count", model=model,
                                                     version=version, protocol=protocol)
    for model, version in ((CLF, clf_v), (SEG, seg_v)):  # every request has been answered
        assert after.value(catalog.INFLIGHT.name, model=model, version=version) == 0
    assert not after.find(catalog.INFLIGHT.name, model="unknown")

    # model calls: one per request that reached the model (sequential requests are not merged)
    clf_calls, clf_items = 5, 6  # v1 x2, explain, v2 (2 images), gRPC
    seg_calls, seg_items = 3, 5  # v1 (2), v2 (1), gRPC (2)
    for model, version, calls, items in ((CLF, clf_v, clf_calls, clf_items), (SEG, seg_v, seg_calls, seg_items)):
        assert delta(before, after, catalog.BATCH_SIZE.name + "_count", model=model, version=version) == calls
        assert delta(before, after, catalog.BATCH_SIZE.name + "_sum", model=model, version=version) == items
        assert delta(before, after, catalog.QUEUE.name + "_count", model=model, version=version) == calls
        assert delta(before, after, catalog.QUEUE.name + "_sum", model=model, version=version) >= 0


def test_model_behaviour_from_the_predictions(front):
    srv, clf_v, seg_v = front, front.models["classifier"]["version"], front.models["segmenter"]["version"]
    clf_imgs = [normal(20 + s) for s in range(4)]
    seg_imgs = [Images.png(seed=30 + s, w=80 + 8 * s, h=60) for s in range(3)]
    before = scrape(srv)
    out = outputs(httpx.post(f"{srv.url}/v2/models/{CLF}/infer", json=v2(clf_imgs), timeout=60))
    tensor = np.random.default_rng(0).normal(size=(2, 3, 40, 48)).astype(np.float32)
    rows = outputs(httpx.post(f"{srv.url}/v2/models/{CLF}/infer", timeout=60, json={"inputs": [
        {"name": "tensor", "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}]}))
    labels = Counter(out["label"]) + Counter(rows["label"])
    r = httpx.post(f"{srv.url}/v1/models/{SEG}:predict", json=v1(seg_imgs), timeout=60)
    assert r.status_code == 200
    seg = r.json()["predictions"]
    assert all(0.5 <= p["confidence"] <= 1 for p in seg), "segmenter results carry their confidence"
    explained = httpx.post(f"{srv.url}/v1/models/{SEG}:explain", json=v1(seg_imgs[:1]), timeout=60)
    assert explained.status_code == 200  # an explanation is no prediction: nothing below moves for it
    after = scrape(srv)

    pred = catalog.PREDICTIONS.series
    for label, n in labels.items():
        assert delta(before, after, pred, model=CLF, version=clf_v, label=label) == n
    seg_labels = Counter("crack" if p["crack_ratio"] > 0 else "no_crack" for p in seg)
    for label in ("crack", "no_crack"):
        assert delta(before, after, pred, model=SEG, version=seg_v, label=label) == seg_labels[label]
    assert {s.labels["label"] for s in after.find(pred, model=SEG)} <= {"crack", "no_crack"}
    classes = httpx.get(f"{srv.url}/v2/models/{CLF}", timeout=30).json()["parameters"]["classes"]
    assert {s.labels["label"] for s in after.find(pred, model=CLF)} <= set(classes)

    conf = catalog.CONFIDENCE.name
    assert delta(before, after, conf + "_count", model=CLF, version=clf_v) == 6  # 4 images + 2 tensor rows
    assert delta(before, after, conf + "_sum", model=CLF, version=clf_v) == pytest.approx(
        sum(out["score"]) + sum(rows["score"]), abs=1e-5)
    assert delta(before, after, conf + "_count", model=SEG, version=seg_v) == 3
    assert delta(before, after, conf + "_sum", model=SEG, version=seg_v) == pytest.approx(
        sum(p["confidence"] for p in seg), abs=1e-5)
    area = catalog.CRACK_AREA.name
    assert delta(before, after, area + "_count", model=SEG, version=seg_v) == 3
    assert delta(before, after, area + "_sum", model=SEG, version=seg_v) == pytest.approx(
        sum(p["crack_ratio"] for p in seg), abs=1e-5)
    assert not after.find(area + "_count", model=CLF)

    # input statistics: images only (a tensor has none), at their own size
    for metric in (catalog.INPUT_BRIGHTNESS, catalog.INPUT_CONTRAST, catalog.INPUT_SHARPNESS, catalog.INPUT_MEGAPIXELS):
        assert delta(before, after, metric.name + "_count", model=CLF, version=clf_v) == 4, metric.name
        assert delta(before, after, metric.name + "_count", model=SEG, version=seg_v) == 3, metric.name
    mp = catalog.INPUT_MEGAPIXELS.name + "_sum"
    assert delta(before, after, mp, model=SEG, version=seg_v) == pytest.approx(
        sum((80 + 8 * s) * 60 / 1e6 for s in range(3)))
    bright = catalog.INPUT_BRIGHTNESS.name
    assert 0.4 < delta(before, after, bright + "_sum", model=CLF, version=clf_v) / 4 < 0.7  # grey ~150/255


def test_ready_and_info(front):
    after = scrape(front)
    for key, model in (("classifier", CLF), ("segmenter", SEG)):
        version = front.models[key]["version"]
        assert after.value(catalog.READY.name, model=model, version=version) == 1
        info = after.find(catalog.MODEL_INFO.name, model=model, version=version)
        assert len(info) == 1 and info[0].value == 1
        assert info[0].labels == {"model": model, "version": version, "role": "champion", "runtime": "inprocess",
                                  "run_id": front.models[key]["run_id"]}
    assert after.value("process_resident_memory_bytes") > 0


def test_drift_rises_with_dark_images(front):
    srv, clf_v = front, front.models["classifier"]["version"]
    psi = catalog.DRIFT_PSI.name
    # the segmenter's spec has no profile: no drift series, and the log says why, once
    assert not scrape(srv).find(psi, model=SEG)
    seg_v = front.models["segmenter"]["version"]
    assert srv.log.read_text().count(f"model {SEG} version {seg_v} has no reference_profile") == 1
    assert "no reference_profile" not in srv.log.read_text().replace(f"model {SEG} version {seg_v} has no", "")

    for start in (0, WINDOW // 2):  # a full window of images like the profile's
        r = httpx.post(f"{srv.url}/v2/models/{CLF}/infer", json=v2([normal(2000 + start + s) for s in range(WINDOW // 2)]),
                       timeout=120)
        assert r.status_code == 200
    calm = scrape(srv)
    assert calm.value(catalog.DRIFT_WINDOW.name, model=CLF, version=clf_v) == WINDOW
    features = {s.labels["feature"]: s.value for s in calm.find(psi, model=CLF, version=clf_v)}
    assert set(features) == set(catalog.DRIFT_FEATURES)
    assert features["brightness"] < 0.25, features

    for start in (0, WINDOW // 2):  # the same scenes, dark: the whole window shifts
        r = httpx.post(f"{srv.url}/v2/models/{CLF}/infer", json=v2([dark(3000 + start + s) for s in range(WINDOW // 2)]),
                       timeout=120)
        assert r.status_code == 200
    shifted = {s.labels["feature"]: s.value for s in scrape(srv).find(psi, model=CLF, version=clf_v)}
    assert shifted["brightness"] > 1.0 > features["brightness"], (features, shifted)
    assert shifted["brightness"] > features["brightness"] + 0.75
    assert shifted["megapixels"] < 0.25  # same sizes: only what changed moves


# ---------------------------------------------------------------------------- no server


def test_scrape_time_series_follow_the_models():
    """Readiness turns 0 while draining; drift series only for a model with a profile."""
    from fissure.observability.serving import FrontMetrics

    profile = Profile.from_samples({"brightness": np.linspace(0.4, 0.7, 200), "confidence": [0.9] * 200})
    state = {"draining": False}
    metrics = FrontMetrics(drift_window=50, draining=lambda: state["draining"], process=False)
    clf = SimpleNamespace(name=CLF, version="3", task="classify", ready=True, role="challenger",
                          runtime_name="torchserve", meta={"run_id": "abc"}, spec={"reference_profile": profile.to_dict()})
    seg = SimpleNamespace(name=SEG, version="1", task="segment", ready=False, role="champion", runtime_name="torchserve",
                          meta={}, spec={})
    mc, ms = metrics.add_model(clf), metrics.add_model(seg)
    text = lambda: Scrape(metrics.render().decode())  # noqa: E731
    s = text()
    assert s.value("fissure_model_ready", model=CLF) == 1 and s.value("fissure_model_ready", model=SEG) == 0
    assert s.find("fissure_model_info", model=CLF, role="challenger", runtime="torchserve", run_id="abc")
    assert s.value("fissure_drift_window_items", model=CLF) == 0 and not s.find("fissure_drift_psi")
    assert ms.drift is None and not s.find("fissure_drift_window_items", model=SEG)
    for i in range(50):
        mc.prediction({"label": "crack", "score": 0.9}, {"brightness": 0.05, "megapixels": 0.01})
        ms.prediction({"crack_ratio": 0.0 if i % 2 else 0.1, "confidence": 0.8}, None)
    s = text()
    assert s.value("fissure_drift_psi", model=CLF, feature="brightness") > 1
    assert s.value("fissure_drift_psi", model=CLF, feature="confidence") == pytest.approx(0, abs=1e-6)
    assert s.value("fissure_predictions_total", model=SEG, label="crack") == 25
    assert s.value("fissure_input_brightness_count", model=SEG) == 0  # tensors: no image statistics
    state["draining"] = True
    assert text().value("fissure_model_ready", model=CLF) == 0
    call = metrics.begin("not-served", "grpc")
    metrics.end(call, 404)
    metrics.end(call, 500)  # counted once
    s = text()
    assert s.value("fissure_requests_total", model="unknown", code="404") == 1
    assert not s.find("fissure_requests_total", code="500")


def test_inference_routes():
    from fissure.observability.serving import inference_route

    assert inference_route("/v1/models/crack-classifier:predict") == ("rest-v1", "crack-classifier")
    assert inference_route("/v1/models/a:explain") == ("rest-v1", "a")
    assert inference_route("/v2/models/a/infer") == ("rest-v2", "a")
    assert inference_route("/v2/models/a/versions/3/infer") == ("rest-v2", "a")
    for path in ("/v2/models/a", "/v1/models/a", "/v2/health/ready", "/metrics", "/predictions/a"):
        assert inference_route(path) is None


# In a child process: importing the front (kserve) in pytest's own process registers KServe's
# `inference` protos, and every later gRPC client test then fails on duplicate symbols.
_STATS_SCRIPT = r"""
import json, sys
import numpy as np
import torch
from fissure.models import build_model, default_spec
from fissure.observability.drift import input_stats
from fissure.preprocess import decode_image, image_to_array, normalize, stretch_contrast
from fissure.serving.front.model import TorchServeModel
from fissure.serving.runtime import ModelRuntime

spec = default_spec("segment", base=8, depth=2, size=64)
spec["preprocess"]["gray_std"] = 24.0
tiling = json.loads(sys.argv[1])
if tiling:
    spec["tiling"] = tiling
model = TorchServeModel("crack-segmenter", {}, spec, backend=None, wire_token="t")
model.metrics = object()  # statistics are computed only for a front with metrics
png = sys.stdin.buffer.read()
(info, data), stats = model._pixels_entry(png)
img = decode_image(png)
raw = image_to_array(img, model.preprocess_config, stretch=False)
sent = np.frombuffer(data, np.uint8).reshape(info["shape"])
unstretched = np.asarray(img) if tiling else raw  # the working image (within the budget) or model size
seen = stretch_contrast(unstretched, 24.0)  # what the model is to get
worker = ModelRuntime(build_model(spec), spec)
item = worker.prepare_pixels(data, info["shape"], info["size"])
got = item.native.numpy() if tiling else item.tensor
want = seen if tiling else normalize(torch.from_numpy(seen)[None], worker.cfg)[0]
print(json.dumps({
    "stats_unstretched": stats == input_stats(raw, (img.height, img.width)),
    "sent_unstretched": bool((sent == unstretched).all()),
    "worker_stretches": bool((got == want).all()),
    "seen_std": float(seen.std()), "raw_std": float(raw.std()),
}))
"""


@pytest.mark.parametrize("tiling", [None, {"mode": "tile", "overlap": 16}])
def test_drift_statistics_see_the_image_as_sent_when_the_model_stretches_contrast(tiling):
    """A model with preprocess.gray_std gets every image at one contrast, but the drift gauges
    must still see a flat, dark camera: the front's statistics come from the unstretched pixels,
    as the training profile's do (tests/training). The front sends those pixels as they are and
    the worker stretches them (once per input it makes, tests/serving/test_tiling_serving.py)."""
    out = subprocess.run([sys.executable, "-c", _STATS_SCRIPT, json.dumps(tiling)], input=dark(7),
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    got = json.loads(out.stdout)
    assert got["stats_unstretched"] and got["sent_unstretched"]
    assert got["worker_stretches"]
    assert got["seen_std"] > 2 * got["raw_std"]  # the model gets the stretched image
