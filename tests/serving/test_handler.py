"""The TorchServe handler in-process, as TorchServe's own handler unit tests drive theirs: a model
directory like an unpacked MAR, TorchServe's real ``Context`` (system properties, per-request
headers and statuses) and requests built by TorchServe's own ``Service.retrieve_data_for_inference``
from what its frontend sends a worker. No TorchServe process, no Java.
"""

from __future__ import annotations

import gc
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.errors import FissureError, InputError, PayloadTooLarge, PermissionDenied
from fissure.serving import codec
from fissure.serving.runtime import ModelRuntime, device_for, error_result

ts_context = pytest.importorskip("ts.context", reason="TorchServe is not installed (pip install -e .[serve])")
from ts.service import Service  # noqa: E402

TOKEN = "front-secret-0123456789"
SPECS = {"classify": {"width": 8, "size": 64}, "segment": {"base": 8, "depth": 2, "size": 64}}
NAMES = {"classify": "crack-classifier", "segment": "crack-segmenter"}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A directory per task holding what a fissure MAR unpacks to."""
    from fissure.models import build_model, default_spec
    from fissure.serving.runtime import META_FILE, SPEC_FILE, WEIGHTS_FILE

    dirs = {}
    for task, params in SPECS.items():
        spec = default_spec(task, **params)
        torch.manual_seed(0)
        model = build_model(spec).eval()
        folder = tmp_path_factory.mktemp(task)
        torch.save(model.state_dict(), folder / WEIGHTS_FILE)
        (folder / SPEC_FILE).write_text(json.dumps(spec))
        (folder / META_FILE).write_text(json.dumps({"name": spec["name"], "version": "3"}))
        dirs[task] = folder
    return dirs


@pytest.fixture
def limits(monkeypatch):
    """Set FISSURE_* limits for one test (settings are cached: reload, and reload back after)."""
    from fissure.settings import reload_settings

    def set_limits(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"FISSURE_{key.upper()}", str(value))
        return reload_settings()

    yield set_limits
    monkeypatch.undo()
    reload_settings()


@pytest.fixture
def make_handler(model_dirs, monkeypatch):
    """initialize() a handler the way a TorchServe worker does: env first, then the context."""
    from fissure.serving.handler import FissureHandler

    threads = torch.get_num_threads()

    def make(task="classify", gpu_id=None, token=TOKEN):
        if token is None:
            monkeypatch.delenv(codec.WIRE_TOKEN_ENV, raising=False)
        else:
            monkeypatch.setenv(codec.WIRE_TOKEN_ENV, token)
        context = ts_context.Context(NAMES[task], str(model_dirs[task]), {"model": {}}, 8, gpu_id, "0.12.0")
        handler = FissureHandler()
        handler.initialize(context)
        return handler, context

    yield make
    gc.unfreeze()  # initialize() froze the test process's objects: a worker's, not ours
    torch.set_num_threads(threads)


def png(w=96, h=64, seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def request(body, content_type="application/octet-stream", headers=None, name="body"):
    """One request as TorchServe's frontend hands it to a worker (a JSON body arrives parsed)."""
    value = json.loads(body) if content_type == "application/json" else bytearray(body)
    return {"requestId": b"r", "parameters": [{"name": name, "contentType": content_type, "value": value}],
            "headers": [{"name": k.encode(), "value": v.encode()} for k, v in (headers or {}).items()]}


def run(handler, context, *requests):
    """handle() one TorchServe batch; [(status, decoded JSON body)] per request."""
    processors, data, ids = Service.retrieve_data_for_inference(list(requests))
    context.request_ids, context.request_processor = ids, processors
    out = handler.handle(data, context)
    assert len(out) == len(requests)
    for i in range(len(requests)):
        assert context.get_response_content_type(i) == "application/json"
    return [(context.get_response_status(i)[0], json.loads(o)) for i, o in enumerate(out)]


def wire(op, items, token=TOKEN, header=codec.WIRE_HEADER):
    headers = {header: token} if token is not None else {}
    return request(codec.pack_wire(op, items), codec.WIRE_CONTENT_TYPE, headers)


def pixels_item(handler, data: bytes):
    from fissure.preprocess import decode_image, image_to_array

    img = decode_image(data)
    arr = image_to_array(img, handler.runtime.cfg)
    return {"kind": "pixels", "shape": list(arr.shape), "size": [img.height, img.width]}, arr.tobytes()


# ---------------------------------------------------------------------------- device


@pytest.mark.parametrize("gpu_id, cuda, expected", [
    (None, False, "cpu"), (None, True, "cpu"), (0, False, "cpu"), (0, True, "cuda:0"), (3, True, "cuda:3"),
])
def test_device_for_follows_torchserves_gpu_id(gpu_id, cuda, expected):
    assert device_for(gpu_id, cuda) == torch.device(expected)


def test_no_gpu_id_runs_on_the_cpu(make_handler):
    handler, _ = make_handler(gpu_id=None)
    assert handler.runtime.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in handler.runtime.module.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the gpu_id execution path runs on a GPU only")
def test_gpu_id_loads_and_runs_the_model_on_that_gpu(make_handler):
    gpu = torch.cuda.device_count() - 1
    for task in ("classify", "segment"):
        handler, context = make_handler(task, gpu_id=gpu)
        assert handler.runtime.device == torch.device("cuda", gpu)
        assert all(p.device == torch.device("cuda", gpu) for p in handler.runtime.module.parameters())
        cpu = ModelRuntime.from_dir(context.system_properties["model_dir"])
        (status, out), = run(handler, context, request(png()))
        ref = cpu.predict([cpu.prepare_image(png())])[0]
        assert status == 200
        if task == "classify":
            assert out["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-3)
        else:
            assert out["size"] == ref["size"] == [64, 96]
        (status, out), = run(handler, context, request(png(), headers={"explain": "True"}))
        assert status == 200 and out["summary"]["size"] == [64, 96]


# ---------------------------------------------------------------------------- native request forms


def test_raw_image_bytes(make_handler):
    handler, context = make_handler()
    (status, out), = run(handler, context, request(png()))
    assert status == 200
    assert out["label"] in ("no_crack", "crack") and abs(sum(out["probabilities"].values()) - 1) < 1e-4
    assert (out["model_name"], out["model_version"]) == ("crack-classifier", "3")


def test_segmenter_mask_has_the_images_own_size(make_handler):
    handler, context = make_handler("segment")
    (status, out), = run(handler, context, request(png(w=50, h=30)))
    assert status == 200 and out["size"] == [30, 50]
    assert codec.rle_decode(out["mask_rle"]).shape == (30, 50)


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
def test_json_b64_parsed_by_torchserve_or_not(make_handler, content_type):
    handler, context = make_handler()
    body = json.dumps({"b64": codec.b64encode(png())}).encode()
    (status, out), = run(handler, context, request(body, content_type))
    assert status == 200 and "label" in out


def test_instances_each_form_and_a_bad_one_fails_alone(make_handler):
    handler, context = make_handler()
    b64 = codec.b64encode(png())
    body = json.dumps({"instances": [{"b64": b64}, {"data": b64}, {"image": {"b64": b64}}, b64,
                                     {"b64": codec.b64encode(b"not an image")}, {"nothing": 1}]})
    (status, out), = run(handler, context, request(body.encode(), "application/json"))
    assert status == 200
    preds = out["predictions"]
    assert [("label" in p) for p in preds] == [True] * 4 + [False, False]
    assert preds[4] == {"error": "not an image: could not decode 12 bytes as JPEG, PNG, BMP, TIFF or WebP", "status": 415}
    assert preds[5]["status"] == 400 and "instance must be" in preds[5]["error"]


def test_instances_all_bad_takes_the_first_errors_status(make_handler):
    handler, context = make_handler()
    body = json.dumps({"instances": [{"b64": codec.b64encode(b"nope")}]}).encode()
    (status, out), = run(handler, context, request(body, "application/json"))
    assert status == 415 and out["predictions"][0]["status"] == 415


def test_a_batch_of_good_and_bad_requests_fails_only_the_bad(make_handler):
    """One TorchServe batch: each request gets its own status; the good ones share one forward."""
    handler, context = make_handler()
    got = run(handler, context,
              request(png(seed=1)),
              request(b"hello, not an image"),
              request(b"{broken json", "application/octet-stream"),
              request(json.dumps({"b64": codec.b64encode(png(seed=2))}).encode(), "application/json"),
              request(b""))
    assert [s for s, _ in got] == [200, 415, 400, 200, 400]
    assert "label" in got[0][1] and "label" in got[3][1]
    assert got[1][1]["error"].startswith("not an image") and got[2][1]["error"].startswith("malformed JSON")
    assert got[4][1]["error"].startswith("empty image")
    assert all("\n" not in body.get("error", "") for _, body in got)


def test_explain_header(make_handler):
    handler, context = make_handler()
    (status, out), = run(handler, context, request(png(w=70, h=40), headers={"explain": "True"}))
    assert status == 200 and out["method"] == "grad-cam" and out["summary"]["size"] == [40, 70]
    body = json.dumps({"instances": [{"b64": codec.b64encode(png())}]}).encode()
    (status, out), = run(handler, context, request(body, "application/json", headers={"explain": "True"}))
    assert status == 200 and out["explanations"][0]["method"] == "grad-cam"


# ---------------------------------------------------------------------------- the internal frame


def test_wire_frame_from_the_front(make_handler):
    handler, context = make_handler("segment")
    data = png(w=50, h=30)
    tensor = np.zeros((2, 3, 16, 16), np.float32)
    items = [pixels_item(handler, data), ({"kind": "image"}, data), ({"kind": "image"}, b"junk"),
             ({"kind": "tensor", "dtype": "float32", "shape": list(tensor.shape)}, tensor.tobytes())]
    (status, out), = run(handler, context, wire("predict", items))
    assert status == 200
    pixels, image, bad, rows = out["results"]
    assert pixels[0]["mask_rle"] == image[0]["mask_rle"] and pixels[0]["size"] == [30, 50]
    assert bad == {"error": "not an image: could not decode 4 bytes as JPEG, PNG, BMP, TIFF or WebP", "status": 415}
    assert len(rows) == 2 and rows[0]["size"] == [16, 16]
    (status, out), = run(handler, context, wire("explain", items[:1]))
    assert status == 200 and out["results"][0][0]["method"] == "probability-map"


def test_wire_token_header_case_does_not_matter(make_handler):
    """TorchServe hands header names on as the client spelt them."""
    handler, context = make_handler()
    (status, out), = run(handler, context, wire("predict", [({"kind": "image"}, png())], header="x-fissure-wire"))
    assert status == 200 and "label" in out["results"][0][0]


@pytest.mark.parametrize("token, header", [(None, codec.WIRE_HEADER), ("guess", codec.WIRE_HEADER),
                                           (TOKEN[:-1], codec.WIRE_HEADER), ("", codec.WIRE_HEADER),
                                           (TOKEN, "X-Fissure-Wire-Token")])
def test_wire_frame_without_the_token_is_403(make_handler, token, header):
    handler, context = make_handler()
    (status, out), = run(handler, context, wire("predict", [({"kind": "image"}, png())], token, header))
    assert status == 403 and out["error"].startswith("internal frame refused: missing or wrong X-Fissure-Wire")


def test_worker_without_a_token_refuses_every_frame(make_handler):
    for token in (None, ""):
        handler, context = make_handler(token=token)
        got = run(handler, context, wire("predict", [({"kind": "image"}, png())], token=""),
                  wire("predict", [({"kind": "image"}, png())], token=TOKEN))
        assert got == [(403, {"error": "internal frame refused: this worker has no FISSURE_WIRE_TOKEN",
                              "status": 403})] * 2


def test_a_form_field_named_like_the_header_is_not_a_token(make_handler):
    """Multipart fields show up among TorchServe's request properties, as dicts: never a token."""
    handler, context = make_handler()
    frame = codec.pack_wire("predict", [({"kind": "image"}, png())])
    req = request(frame, codec.WIRE_CONTENT_TYPE, name=codec.WIRE_HEADER)
    (status, out), = run(handler, context, req)
    assert status == 403


def test_forged_sizes_in_a_frame_with_the_token_are_refused_before_allocation(make_handler):
    """Even the front's frame is checked: a 100000 x 100000 "size" (a 40 GB mask to upsample to)
    and a tensor of more rows than a request may hold (64) are 413 from their headers alone."""
    handler, context = make_handler("segment")
    item, payload = pixels_item(handler, png())
    forged = ({**item, "size": [100_000, 100_000]}, payload)
    (status, out), = run(handler, context, wire("predict", [forged]))
    assert status == 413 and "100000x100000" in out["error"]
    rows = np.zeros((65, 3, 8, 8), np.float32)
    (status, out), = run(handler, context,
                         wire("predict", [({"kind": "tensor", "dtype": "float32", "shape": list(rows.shape)}, rows.tobytes())]))
    assert status == 413 and out["error"].startswith("65 images in one request")


def test_runtime_checks_declared_sizes_itself(model_dirs):
    """The runtime's own checks, for callers that build items without the codec (in-process):
    limits first, from the declared numbers alone (the data here is empty)."""
    rt = ModelRuntime.from_dir(model_dirs["segment"])
    pixels = np.zeros((64, 64, 3), np.uint8).tobytes()
    with pytest.raises(PayloadTooLarge, match="image size 100000x100000 is over the 40 MP limit"):
        rt.prepare_pixels(pixels, [64, 64, 3], [100_000, 100_000])
    for size in ([0, 5], [5], None, [5.0, 5], [True, 5]):
        with pytest.raises(InputError, match="image size must be"):
            rt.prepare_pixels(pixels, [64, 64, 3], size)
    with pytest.raises(InputError, match="pixels must be uint8"):
        rt.prepare_pixels(pixels, None, [5, 5])
    with pytest.raises(PayloadTooLarge, match="tensor of 65 images; the limit is 64"):
        rt.prepare_tensor(b"", [65, 3, 8, 8])
    with pytest.raises(PayloadTooLarge, match="image size 7000x7000"):
        rt.prepare_tensor(b"", [1, 3, 7000, 7000])
    with pytest.raises(InputError, match=r"tensor shape must be \[N,3,H,W\]"):
        rt.prepare_tensor(b"", [0, 3, 8, 8])


# ---------------------------------------------------------------------------- request limits


def test_too_many_instances_is_413_for_the_request(make_handler, limits):
    handler, context = make_handler()
    limits(max_items=3)  # read per request, not once when the worker starts
    body = json.dumps({"instances": [codec.b64encode(png())] * 4}).encode()
    (status, out), = run(handler, context, request(body, "application/json"))
    assert status == 413 and out["error"] == "4 instances in one request; the limit is 3 (FISSURE_MAX_ITEMS)"


def test_request_pixel_budget_fails_the_whole_request(make_handler, limits):
    """Images whose headers add up to more than FISSURE_MAX_REQUEST_PIXELS: 413 for the request
    (not per item), and the other requests of the batch are served."""
    limits(max_request_pixels=96 * 64 * 2)
    handler, context = make_handler()
    three = json.dumps({"instances": [codec.b64encode(png(seed=s)) for s in range(3)]}).encode()
    two = json.dumps({"instances": [codec.b64encode(png(seed=s)) for s in range(2)]}).encode()
    (s3, out3), (s2, out2) = run(handler, context, request(three, "application/json"), request(two, "application/json"))
    assert s3 == 413 and "FISSURE_MAX_REQUEST_PIXELS" in out3["error"]
    assert s2 == 200 and len(out2["predictions"]) == 2
    frame = wire("predict", [({"kind": "image"}, png(seed=s)) for s in range(3)])
    (status, out), = run(handler, context, frame)
    assert status == 413 and "FISSURE_MAX_REQUEST_PIXELS" in out["error"]


# ---------------------------------------------------------------------------- error entries


@pytest.mark.parametrize("exc, expected", [
    (InputError("bad\nsecond line"), {"error": "bad", "status": 400}),
    (PayloadTooLarge("big"), {"error": "big", "status": 413}),
    (PermissionDenied("no"), {"error": "no", "status": 403}),
    (FissureError("broken"), {"error": "broken", "status": 500}),
    (ValueError("secret detail"), {"error": "internal error: ValueError", "status": 500}),
])
def test_error_result_uses_the_one_status_mapping(exc, expected):
    assert error_result(exc) == expected
