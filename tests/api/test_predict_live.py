"""/predict against a real serving front: `fissure serve --runtime inprocess` with two tiny models
(tests/serving/_models.py), the API under TestClient. Then feedback, the export and
`fissure data prepare` reading it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fissure.data.loaders import segmentation_items

pytestmark = pytest.mark.slow
FISSURE = str(Path(sys.executable).with_name("fissure"))


@pytest.fixture
def live(make_client, serving):
    return make_client(inference_url=serving["url"])


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_predict_classifier_with_heatmap(live, serving, images):
    meta = httpx.get(f"{serving['url']}/v2/models/crack-classifier").json()
    image = images.jpeg(96, 64, seed=1)
    r = live.post("/predict", files={"file": ("crack.jpg", image, "image/jpeg")}, data={"explain": "true"})
    assert r.status_code == 201, r.text
    p = r.json()
    model = serving["models"]["classifier"]
    assert (p["model_name"], p["model_version"], p["mlflow_run_id"]) == ("crack-classifier", model["version"],
                                                                        model["run_id"])
    assert p["task"] == "classify" and p["image_size"] == [64, 96] and p["flag"] is None
    probs = p["output"]["probabilities"]
    assert sorted(probs) == sorted(meta["parameters"]["classes"]) and p["output"]["label"] in probs
    assert p["uncertainty"] == pytest.approx(1 - abs(2 * probs["crack"] - 1), abs=1e-6)
    assert p["output"]["explanation"]["method"] == "grad-cam" and p["latency_ms"] > 0
    # the stored record and its pictures
    got = live.get(f"/predictions/{p['id']}").json()
    assert got["image_sha256"] == p["image_sha256"] and got["feedback"] == []
    assert live.get(p["links"]["image"]).content == image
    assert live.get(p["links"]["image"]).headers["content-type"] == "image/jpeg"
    assert _png(live.get(p["links"]["heatmap"]).content).shape == (64, 96)
    assert _png(live.get(p["links"]["overlay"]).content).shape == (64, 96, 3)
    assert p["links"]["mask"] is None


def test_predict_segmenter_and_save_for_retrain(live, serving, images):
    image = images.png(96, 64, seed=2)
    r = live.post("/save-for-retrain", files={"file": ("s.png", image, "image/png")},
                  data={"model": "crack-segmenter"})
    assert r.status_code == 201, r.text
    p = r.json()
    model = serving["models"]["segmenter"]
    assert (p["model_version"], p["mlflow_run_id"], p["task"], p["flag"]) == (
        model["version"], model["run_id"], "segment", "unsatisfactory")
    mask = _png(live.get(p["links"]["mask"]).content)
    assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}
    assert p["output"]["crack_ratio"] == pytest.approx((mask > 0).mean(), abs=1e-6)
    assert p["output"]["mask_rle"]["size"] == [64, 96]
    assert 0.0 <= p["uncertainty"] <= 1.0 and p["links"]["heatmap"]  # the probability map
    assert live.get("/predictions", params={"model": "crack-segmenter"}).json()["total"] == 1


def test_predict_errors_from_the_server(live, images):
    r = live.post("/predict", files={"file": ("a.png", images.png(), "image/png")}, data={"model": "no-such-model"})
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]
    r = live.post("/predict", files={"file": ("a.txt", b"plain text", "text/plain")})
    assert r.status_code == 415
    assert live.get("/predictions").json()["total"] == 0


def test_predictions_feed_the_review_queue_export_and_prepare(live, images, tmp_path):
    ids = []
    for seed in range(3):
        r = live.post("/predict", files={"file": ("s.png", images.png(96, 64, seed=10 + seed), "image/png")},
                      data={"model": "crack-segmenter"})
        assert r.status_code == 201, r.text
        ids.append(r.json())
    queue = live.get("/review-queue", params={"model": "crack-segmenter"}).json()["items"]
    assert [q["uncertainty"] for q in queue] == sorted((p["uncertainty"] for p in ids), reverse=True)
    corrected = images.mask(96, 64, rows=slice(20, 26))
    r = live.post(f"/predictions/{queue[0]['id']}/feedback", role="annotator", data={"verdict": "wrong"},
                  files={"mask": ("m.png", corrected, "image/png")})
    assert r.status_code == 200, r.text
    assert live.post(f"/predictions/{queue[1]['id']}/feedback", role="annotator",
                     data={"verdict": "correct"}).status_code == 200
    assert [q["id"] for q in live.get("/review-queue").json()["items"]] == [queue[2]["id"]]

    # `fissure feedback export` on the same store, then `fissure data prepare` reads the folder
    out = tmp_path / "feedback"
    env = {**os.environ, "FISSURE_DATABASE_URL": live.store.url, "FISSURE_BLOB_URL": live.store.blobs.url}
    done = subprocess.run([FISSURE, "feedback", "export", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 items" in done.stdout
    items = segmentation_items(out)
    assert len(items) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    wrong = next(i for i in manifest["items"] if i["verdict"] == "wrong")
    assert (_png((out / wrong["mask"]).read_bytes()) == _png(corrected)).all()
    prepared = tmp_path / "prepared"
    done = subprocess.run([FISSURE, "data", "prepare", "--out", str(prepared), "--count", "6",
                           "--size", "64", "--patch-size", "32", "--patch-stride", "32", "--feedback", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((prepared / "manifest.json").read_text())["feedback"]
    assert info == {"source": str(out), "layout": "segment", "items": 2}
    assert sorted(p.name for p in (prepared / "segment" / "train" / "images").glob("feedback-*")) == sorted(
        f"feedback-{i['image_sha256'][:16]}.jpg" for i in manifest["items"])
