"""Bad input, one test each: a 4xx with a one-line reason (no traceback), the worker stays up
(a good request afterwards succeeds, worker pids unchanged), and in a batch one bad item does
not fail the good ones."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

CLF, SEG = "crack-classifier", "crack-segmenter"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack("!IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 256)) + chunk(b"IEND", b"")


def float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((32, 32)).astype(np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def assert_rejected(resp: httpx.Response, status: int | tuple, words: str = "") -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, f"{resp.status_code}: {resp.text[:300]}"
    assert 400 <= resp.status_code < 500
    text = resp.text
    assert "Traceback" not in text and 'File "' not in text
    reason = resp.json().get("error") or resp.json().get("message")
    assert reason and "\n" not in reason and len(reason) < 400, reason
    assert words.lower() in reason.lower(), reason
    return reason


@pytest.fixture(scope="module")
def pids(server):
    return {name: server.worker_pids(name) for name in (CLF, SEG)}


@pytest.fixture
def still_works(server, png_bytes, pids):
    """After the test: a good request succeeds on both models and no worker restarted."""
    yield
    for name in (CLF, SEG):
        r = server.post(f"/v1/models/{name}:predict", json={"instances": [{"b64": b64(png_bytes)}]})
        assert r.status_code == 200, r.text
        assert server.worker_pids(name) == pids[name], "a TorchServe worker restarted"


def v1(server, payload: bytes, model=CLF):
    return server.post(f"/v1/models/{model}:predict", json={"instances": [{"b64": b64(payload)}]})


def v2(server, payload: bytes, model=SEG):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(payload)]}]}
    return server.post(f"/v2/models/{model}/infer", json=body)


# ---------------------------------------------------------------------------- images


def test_not_an_image(server, still_works):
    assert_rejected(v1(server, b"hello, this is plain text and not an image"), 415, "not an image")


def test_truncated_image(server, png_bytes, still_works):
    assert_rejected(v2(server, png_bytes[: len(png_bytes) // 2]), 400, "truncated")


def test_zero_bytes(server, still_works):
    assert_rejected(v1(server, b""), 400, "zero bytes")
    raw = server.post(f"/v1/models/{CLF}:predict", content=b"", headers={"Content-Type": "image/png"})
    assert_rejected(raw, 400, "zero bytes")


def test_hundred_megapixel_image(server, still_works):
    assert_rejected(v1(server, png_header(10_000, 10_000)), 413)


def test_decompression_bomb(server, still_works):
    assert_rejected(v2(server, png_header(100_000, 100_000)), 413, "bomb")


def test_unsupported_mode_float_tiff(server, still_works):
    assert_rejected(v1(server, float_tiff()), 415, "mode")


def test_bad_base64(server, still_works):
    r = server.post(f"/v1/models/{CLF}:predict", json={"instances": [{"b64": "%%% not base64 %%%"}]})
    assert_rejected(r, 400, "base64")


# ---------------------------------------------------------------------------- tensors


def tensor_body(arr: np.ndarray, datatype: str, shape=None):
    return {"inputs": [{"name": "tensor", "datatype": datatype, "shape": list(shape or arr.shape),
                        "data": arr.ravel().tolist()}]}


@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 1, 32, 32), (1, 3, 4, 4)])
def test_wrong_tensor_shape(server, shape, still_works):
    arr = np.zeros(shape, np.float32)
    assert_rejected(server.post(f"/v2/models/{CLF}/infer", json=tensor_body(arr, "FP32")), 400, "shape")


def test_tensor_data_does_not_match_shape(server, still_works):
    body = tensor_body(np.zeros(10, np.float32), "FP32", shape=[1, 3, 8, 8])
    assert_rejected(server.post(f"/v2/models/{CLF}/infer", json=body), 400, "shape")


@pytest.mark.parametrize("datatype", ["FP64", "INT32"])
def test_wrong_dtype(server, datatype, still_works):
    arr = np.zeros((1, 3, 16, 16))
    assert_rejected(server.post(f"/v2/models/{CLF}/infer", json=tensor_body(arr, datatype)), 400, "FP32")


def test_unsupported_datatype(server, still_works):
    body = {"inputs": [{"name": "x", "datatype": "FOO", "shape": [1], "data": [1]}]}
    assert_rejected(server.post(f"/v2/models/{CLF}/infer", json=body), 400)


def test_grpc_wrong_shape_is_invalid_argument(server, still_works):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(server.grpc)
    t = grpcclient.InferInput("tensor", [1, 32, 32], "FP32")
    t.set_data_from_numpy(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as err:
        c.infer(CLF, [t])
    assert "INVALID_ARGUMENT" in err.value.status() and "shape" in err.value.message()
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException) as err:
        c.infer(SEG, [inp])
    assert "INVALID_ARGUMENT" in err.value.status() and "not an image" in err.value.message()
    c.close()


# ---------------------------------------------------------------------------- requests


def test_malformed_json_v1(server, still_works):
    r = server.post(f"/v1/models/{CLF}:predict", content=b'{"instances": [', headers={"Content-Type": "application/json"})
    assert_rejected(r, 400)


def test_malformed_json_v2(server, still_works):
    r = server.post(f"/v2/models/{SEG}/infer", content=b'{"inputs": [{', headers={"Content-Type": "application/json"})
    assert_rejected(r, 400, "malformed JSON")


@pytest.mark.parametrize("body", [{"instances": "x"}, {"instances": []}, {"foo": 1}])
def test_v1_wrong_body_shape(server, body, still_works):
    assert_rejected(server.post(f"/v1/models/{CLF}:predict", json=body), 400)


@pytest.mark.parametrize("body", [{"inputs": []}, {"inputs": [{"name": "image"}]}, {"outputs": []}])
def test_v2_wrong_body_shape(server, body, still_works):
    assert_rejected(server.post(f"/v2/models/{CLF}/infer", json=body), 400)


def test_unknown_model(server, png_bytes, still_works):
    assert_rejected(v1(server, png_bytes, model="no-such-model"), 404, "no-such-model")
    assert_rejected(v2(server, png_bytes, model="no-such-model"), 404, "no-such-model")
    assert_rejected(server.get("/v2/models/no-such-model"), 404)
    assert_rejected(server.post("/predictions/no-such-model", content=png_bytes), 404)
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(server.grpc)
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png_bytes], dtype=object))
    with pytest.raises(InferenceServerException) as err:
        c.infer("no-such-model", [inp])
    assert "NOT_FOUND" in err.value.status()
    c.close()


def test_native_predictions_bad_image(server, still_works):
    direct = httpx.post(f"{server.ts_inference}/predictions/{CLF}", content=b"not an image", timeout=30)
    assert direct.status_code == 415, direct.text
    assert "Traceback" not in direct.text
    assert_rejected(server.post(f"/predictions/{SEG}", content=png_header(100_000, 100_000)), 413)


# ---------------------------------------------------------------------------- batches


def test_v2_batch_one_bad_item_does_not_fail_the_others(server, images, still_works):
    good1, good2 = images.png(seed=11), images.png(seed=12, w=40, h=30)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                        "data": [b64(good1), b64(b"garbage"), b64(good2)]}]}
    r = server.post(f"/v2/models/{SEG}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["error"][0] == "" and "not an image" in out["error"][1] and out["error"][2] == ""
    assert json.loads(out["mask_rle"][0])["size"] == [64, 96]
    assert json.loads(out["mask_rle"][2])["size"] == [30, 40]
    assert out["mask_png"][1] == ""


def test_v1_batch_one_bad_instance(server, images, still_works):
    body = {"instances": [{"b64": b64(images.png(seed=13))}, {"b64": b64(png_header(100_000, 100_000))}]}
    r = server.post(f"/v1/models/{CLF}:predict", json=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0]["label"] in ("crack", "no_crack")
    assert preds[1]["status"] == 413 and "bomb" in preds[1]["error"]


def test_concurrent_requests_bad_ones_fail_alone(server, images, still_works):
    """Concurrent requests land in the same TorchServe batch; each gets its own status."""
    payloads = [images.png(seed=20 + i) if i % 3 else b"not an image %d" % i for i in range(12)]
    expected = {}
    for i, p in enumerate(payloads):
        if i % 3:
            expected[i] = v1(server, p).json()["predictions"][0]["probabilities"]
    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(lambda p: v1(server, p), payloads))
    for i, r in enumerate(responses):
        if i % 3:
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["probabilities"] == pytest.approx(expected[i], abs=1e-5)
        else:
            assert_rejected(r, 415, "not an image")
