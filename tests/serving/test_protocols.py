"""Every protocol route against a real TorchServe + KServe front (the `server` fixture)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from fissure.serving import codec

CLF, SEG = "crack-classifier", "crack-segmenter"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_bytes(*payloads, name="image"):
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(payloads)], "data": [b64(p) for p in payloads]}]}


def outputs(resp) -> dict:
    return {o["name"]: o for o in resp.json()["outputs"]}


def check_segmentation(result: dict, size_hw):
    """mask PNG at the input's size, RLE == mask, boxes inside, ratio == mask mean."""
    mask = codec.png_to_mask(codec.b64decode(result["mask_png"]))
    assert mask.shape == tuple(size_hw)
    assert np.array_equal(codec.rle_decode(result["mask_rle"]), mask)
    assert result["crack_ratio"] == pytest.approx(mask.mean(), abs=1e-5)
    h, w = size_hw
    for b in result["boxes"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and 0 < b["area"] <= (x1 - x0) * (y1 - y0)
        assert mask[y0:y1, x0:x1].sum() >= b["area"]
    return mask


# ---------------------------------------------------------------------------- health & metadata


def test_v2_health_and_server_metadata(server):
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    assert server.get("/v2").json()["name"]
    assert sorted(server.get("/v2/models").json()["models"]) == [CLF, SEG]
    for name in (CLF, SEG):
        assert server.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}


@pytest.mark.parametrize("key,name", [("classifier", CLF), ("segmenter", SEG)])
def test_v2_metadata_reports_mlflow_name_version_run(server, key, name):
    meta = server.get(f"/v2/models/{name}").json()
    reg = server.models[key]
    assert meta["name"] == name and meta["platform"] == "pytorch_torchserve"
    assert meta["versions"] == [reg["version"]]
    p = meta["parameters"]
    assert (p["mlflow_model_name"], p["mlflow_model_version"], p["mlflow_run_id"]) == (
        reg["name"], reg["version"], reg["run_id"])
    assert p["source_uri"] == f"models:/{name}@champion"
    assert {i["datatype"] for i in meta["inputs"]} == {"BYTES", "FP32"}
    expected = {"label", "probabilities", "score"} if key == "classifier" else {"mask_png", "mask_rle", "crack_ratio", "boxes"}
    assert {o["name"] for o in meta["outputs"]} == expected


def test_v1_model_status(server):
    body = server.get(f"/v1/models/{CLF}").json()
    assert body["name"] == CLF and body["ready"] is True
    assert body["mlflow_run_id"] == server.models["classifier"]["run_id"]
    assert sorted(server.get("/v1/models").json()["models"]) == [CLF, SEG]


# ---------------------------------------------------------------------------- v1


@pytest.mark.parametrize("shape", ["b64", "image.b64", "raw"])
def test_v1_predict_classifier_input_shapes(server, png_bytes, shape):
    if shape == "raw":
        r = server.post(f"/v1/models/{CLF}:predict", content=png_bytes, headers={"Content-Type": "image/png"})
    else:
        inst = {"b64": b64(png_bytes)} if shape == "b64" else {"image": {"b64": b64(png_bytes)}}
        r = server.post(f"/v1/models/{CLF}:predict", json={"instances": [inst]})
    assert r.status_code == 200, r.text
    body = r.json()
    pred = body["predictions"][0]
    assert pred["label"] in ("no_crack", "crack")
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert pred["model_name"] == CLF and pred["model_version"] == server.models["classifier"]["version"]
    assert body["model_version"] == server.models["classifier"]["version"]


def test_v1_predict_segmenter_several_instances(server, images):
    imgs = [images.png(seed=1, w=96, h=64), images.png(seed=2, w=31, h=47)]
    r = server.post(f"/v1/models/{SEG}:predict", json={"instances": [{"b64": b64(i)} for i in imgs]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2
    check_segmentation(preds[0], (64, 96))
    check_segmentation(preds[1], (47, 31))
    assert preds[0]["model_version"] == server.models["segmenter"]["version"]


def test_v1_explain_classifier_grad_cam(server, images):
    r = server.post(f"/v1/models/{CLF}:explain", json={"instances": [{"b64": b64(images.png(w=80, h=50))}]})
    assert r.status_code == 200, r.text
    e = r.json()["explanations"][0]
    assert e["method"] == "grad-cam" and e["target"] in ("no_crack", "crack")
    heat = codec.png_to_mask(codec.b64decode(e["heatmap_png"]))
    assert heat.shape == (50, 80) and e["summary"]["size"] == [50, 80]
    assert 0.0 <= e["summary"]["min"] <= e["summary"]["mean"] <= e["summary"]["max"] <= 1.0


def test_v1_explain_segmenter_probability_map(server, images):
    r = server.post(f"/v1/models/{SEG}:explain", json={"instances": [{"b64": b64(images.png(w=40, h=60))}]})
    assert r.status_code == 200, r.text
    e = r.json()["explanations"][0]
    assert e["method"] == "probability-map"
    with Image.open(__import__("io").BytesIO(codec.b64decode(e["heatmap_png"]))) as im:
        assert im.size == (40, 60) and im.mode == "L"


# ---------------------------------------------------------------------------- v2 REST


def test_v2_infer_classifier_bytes(server, images):
    r = server.post(f"/v2/models/{CLF}/infer", json={"id": "req-1", **v2_bytes(images.png(1), images.png(2))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == CLF
    assert body["model_version"] == server.models["classifier"]["version"]
    out = outputs(r)
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [2]
    assert out["probabilities"]["datatype"] == "FP32" and out["probabilities"]["shape"] == [2, 2]
    probs = np.array(out["probabilities"]["data"]).reshape(2, 2)
    assert probs.sum(axis=1) == pytest.approx([1, 1], abs=1e-4)
    assert "error" not in out


def test_v2_infer_segmenter_named_tensors(server, images):
    png = images.png(seed=3, w=72, h=40)
    r = server.post(f"/v2/models/{SEG}/infer", json=v2_bytes(png))
    assert r.status_code == 200, r.text
    out = outputs(r)
    assert {n: o["datatype"] for n, o in out.items()} == {
        "mask_png": "BYTES", "mask_rle": "BYTES", "crack_ratio": "FP32", "boxes": "BYTES"}
    result = {"mask_png": out["mask_png"]["data"][0], "mask_rle": json.loads(out["mask_rle"]["data"][0]),
              "crack_ratio": out["crack_ratio"]["data"][0], "boxes": json.loads(out["boxes"]["data"][0])}
    mask = check_segmentation(result, (40, 72))
    assert 0 < mask.sum() < mask.size, "the test segmenter is centred to give mixed masks"
    assert result["boxes"], "a mixed mask has at least one region"


def test_v2_fp32_tensor_input_is_resized(server):
    x = np.random.default_rng(0).normal(size=(2, 3, 48, 64)).astype(np.float32)
    body = {"inputs": [{"name": "tensor", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = server.post(f"/v2/models/{CLF}/infer", json=body)
    assert r.status_code == 200, r.text
    assert outputs(r)["probabilities"]["shape"] == [2, 2]
    r = server.post(f"/v2/models/{SEG}/infer", json=body)
    assert r.status_code == 200, r.text
    rle = json.loads(outputs(r)["mask_rle"]["data"][1])
    assert rle["size"] == [48, 64]  # masks come back at the tensor's own size


def test_v2_explain_parameter(server, png_bytes):
    r = server.post(f"/v2/models/{CLF}/infer", json={**v2_bytes(png_bytes), "parameters": {"explain": True}})
    assert r.status_code == 200, r.text
    out = outputs(r)
    assert set(out) == {"heatmap_png", "explanation"}
    assert json.loads(out["explanation"]["data"][0])["method"] == "grad-cam"


def test_same_answer_over_every_protocol(server, png_bytes):
    import tritonclient.grpc as grpcclient

    v1 = server.post(f"/v1/models/{CLF}:predict", json={"instances": [{"b64": b64(png_bytes)}]}).json()
    p1 = [v1["predictions"][0]["probabilities"][k] for k in ("no_crack", "crack")]
    p2 = outputs(server.post(f"/v2/models/{CLF}/infer", json=v2_bytes(png_bytes)))["probabilities"]["data"]
    native = httpx.post(f"{server.ts_inference}/predictions/{CLF}", content=png_bytes, timeout=30).json()
    c = grpcclient.InferenceServerClient(server.grpc)
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png_bytes], dtype=object))
    p3 = c.infer(CLF, [inp]).as_numpy("probabilities")[0].tolist()
    c.close()
    pn = [native["probabilities"][k] for k in ("no_crack", "crack")]
    assert p1 == pytest.approx(p2, abs=1e-5) and p1 == pytest.approx(p3, abs=1e-5) and p1 == pytest.approx(pn, abs=1e-5)


# ---------------------------------------------------------------------------- image kinds


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "jpeg", "palette", "large"])
def test_image_kinds(server, images, kind):
    img = images.crack(90, 60, seed=4)
    if kind == "gray":
        data = images.encode(img.convert("L"))
    elif kind == "rgba":
        rgba = img.convert("RGBA")
        rgba.putalpha(128)
        data = images.encode(rgba)
    elif kind == "gray16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        im16 = Image.fromarray(arr)
        assert im16.mode.startswith("I;16")
        data = images.encode(im16)
    elif kind == "jpeg":
        data = images.encode(img, "JPEG", quality=85)
    elif kind == "palette":
        data = images.encode(img.convert("P"))
    else:
        img = images.crack(1500, 1000, seed=5)
        data = images.encode(img, "JPEG")
    r = server.post(f"/v2/models/{SEG}/infer", json=v2_bytes(data))
    assert r.status_code == 200, r.text
    rle = json.loads(outputs(r)["mask_rle"]["data"][0])
    assert rle["size"] == [img.height, img.width]


# ---------------------------------------------------------------------------- TorchServe native


def test_native_predictions_on_torchserve_and_through_the_front(server, png_bytes):
    direct = httpx.post(f"{server.ts_inference}/predictions/{CLF}", content=png_bytes,
                        headers={"Content-Type": "image/png"}, timeout=30)
    assert direct.status_code == 200, direct.text
    assert direct.json()["model_version"] == server.models["classifier"]["version"]
    proxied = server.post(f"/predictions/{SEG}", content=png_bytes)  # httpx: no content type
    assert proxied.status_code == 200, proxied.text
    check_segmentation(proxied.json(), (64, 96))
    as_json = server.post(f"/predictions/{CLF}", json={"instances": [{"b64": b64(png_bytes)}]})
    assert as_json.status_code == 200 and len(as_json.json()["predictions"]) == 1


def test_native_explanations(server, png_bytes):
    r = server.post(f"/explanations/{CLF}", content=png_bytes, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "grad-cam"


def test_torchserve_apis_are_loopback_only(server):
    from fissure.serving.package import read_properties

    props = read_properties(server.workdir / "config.properties")
    for key in ("inference_address", "management_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props[key] == "127.0.0.1"


def test_torchserve_prometheus_metrics(server, png_bytes):
    server.post(f"/v1/models/{CLF}:predict", json={"instances": [{"b64": b64(png_bytes)}]})
    text = httpx.get(f"{server.ts_metrics}/metrics", timeout=10).text
    assert "ts_inference_requests_total" in text and CLF in text


# ---------------------------------------------------------------------------- gRPC and HTTP with Triton's clients


def test_grpc_standard_client(server, images):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready(CLF) and c.is_model_ready(SEG)
        meta = c.get_model_metadata(SEG, as_json=True)
        assert meta["platform"] == "pytorch_torchserve" and meta["versions"] == [server.models["segmenter"]["version"]]
        data = [images.png(seed=6, w=50, h=40), images.png(seed=7, w=64, h=64)]
        inp = grpcclient.InferInput("image", [2], "BYTES")
        inp.set_data_from_numpy(np.array(data, dtype=object))
        res = c.infer(SEG, [inp], request_id="g-1")
        resp = res.get_response(as_json=True)
        assert resp["id"] == "g-1" and resp["model_version"] == server.models["segmenter"]["version"]
        png = res.as_numpy("mask_png")[0]
        assert codec.png_to_mask(png).shape == (40, 50)  # raw PNG bytes over gRPC
        rle = json.loads(res.as_numpy("mask_rle")[1])
        assert rle["size"] == [64, 64]
        assert res.as_numpy("crack_ratio").shape == (2,)
        x = np.zeros((1, 3, 32, 32), np.float32)
        t = grpcclient.InferInput("tensor", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        probs = c.infer(CLF, [t]).as_numpy("probabilities")
        assert probs.shape == (1, 2) and probs.sum() == pytest.approx(1.0, abs=1e-4)
        exp = c.infer(CLF, [inp], parameters={"explain": True})
        assert json.loads(exp.as_numpy("explanation")[0])["method"] == "grad-cam"
    finally:
        c.close()


def test_http_standard_client_binary_tensors(server, png_bytes):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert c.is_server_ready() and c.is_model_ready(CLF)
        assert c.get_model_metadata(CLF)["versions"] == [server.models["classifier"]["version"]]
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([png_bytes], dtype=object))  # binary extension
        res = c.infer(CLF, [inp])
        assert res.as_numpy("probabilities").shape == (1, 2)
        assert res.as_numpy("label")[0] in (b"no_crack", b"crack", "no_crack", "crack")
    finally:
        c.close()
