"""Dynamic batching: concurrent requests are batched by TorchServe (batch size 8, 50 ms delay in
the fixture) and every request still gets its own, correct result."""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

CLF, SEG = "crack-classifier", "crack-segmenter"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def batch_sizes(server) -> list[int]:
    text = server.log.read_text(errors="replace")
    for path in (server.workdir / "logs").glob("model_log.log*"):
        text += path.read_text(errors="replace")
    return [int(n) for n in re.findall(r"fissure-batch requests=(\d+)", text)]


def test_concurrent_classifier_requests_are_batched_and_correct(server, images):
    payloads = [images.png(seed=100 + i) for i in range(16)]
    sequential = [server.post(f"/v1/models/{CLF}:predict", json={"instances": [{"b64": b64(p)}]})
                  .json()["predictions"][0]["probabilities"] for p in payloads]
    assert len({json.dumps(s) for s in sequential}) > 1, "distinct images should give distinct outputs"
    before = len(batch_sizes(server))

    def call(p):
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(p)]}]}
        return server.post(f"/v2/models/{CLF}/infer", json=body)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, payloads))
    for r, want in zip(responses, sequential):
        assert r.status_code == 200, r.text
        probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]
        assert probs == pytest.approx([want["no_crack"], want["crack"]], abs=1e-5)
    sizes = batch_sizes(server)[before:]
    assert sizes and max(sizes) > 1, f"TorchServe batches seen: {sizes}"
    assert max(sizes) <= 8  # the packaged batch size


def test_concurrent_segmenter_requests_keep_their_own_masks(server, images):
    shapes = [(40 + 8 * i, 30 + 4 * i) for i in range(8)]
    payloads = [images.png(seed=200 + i, w=w, h=h) for i, (w, h) in enumerate(shapes)]
    sequential = [server.post(f"/v1/models/{SEG}:predict", json={"instances": [{"b64": b64(p)}]})
                  .json()["predictions"][0]["mask_rle"] for p in payloads]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda p: server.post(f"/v1/models/{SEG}:predict", json={"instances": [{"b64": b64(p)}]}), payloads))
    for r, (w, h), want in zip(responses, shapes, sequential):
        assert r.status_code == 200, r.text
        rle = r.json()["predictions"][0]["mask_rle"]
        assert rle["size"] == [h, w] and rle == want
