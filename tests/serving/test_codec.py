"""Unit tests of the pure serving helpers (no server): RLE, boxes, PNG, base64, wire format,
config.properties, the handler stub and the in-process model runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fissure.errors import InputError, PayloadTooLarge, UnsupportedMediaType
from fissure.serving import codec

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(1, 40), rng.integers(1, 40))) > 0.6
    rle = codec.rle_encode(mask)
    assert rle["size"] == list(mask.shape)
    assert sum(rle["counts"]) == mask.size
    assert np.array_equal(codec.rle_decode(rle), mask)


def test_rle_is_coco_column_major_starting_with_zeros():
    mask = np.array([[0, 1], [0, 1], [1, 0]], dtype=bool)
    # column-major: column 0 = 0,0,1 ; column 1 = 1,1,0
    assert codec.rle_encode(mask) == {"size": [3, 2], "counts": [2, 3, 1]}
    starts_with_one = np.ones((2, 2), dtype=bool)
    assert codec.rle_encode(starts_with_one)["counts"] == [0, 4]
    assert codec.rle_encode(np.zeros((2, 3), dtype=bool))["counts"] == [6]


def test_rle_decode_rejects_wrong_total():
    with pytest.raises(ValueError):
        codec.rle_decode({"size": [2, 2], "counts": [1, 1]})


# ---------------------------------------------------------------------------- boxes


def test_boxes_two_regions_largest_first_with_exclusive_max():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 3:10] = True  # 21 px
    mask[10:18, 20:22] = True  # 16 px
    boxes = codec.mask_boxes(mask)
    assert boxes == [{"box": [3, 2, 10, 5], "area": 21}, {"box": [20, 10, 22, 18], "area": 16}]


def test_boxes_diagonal_pixels_are_one_region_and_empty_mask_has_none():
    mask = np.eye(6, dtype=bool)
    assert codec.mask_boxes(mask) == [{"box": [0, 0, 6, 6], "area": 6}]
    assert codec.mask_boxes(np.zeros((4, 4), dtype=bool)) == []


def test_boxes_cap_and_min_area():
    mask = np.zeros((10, 40), dtype=bool)
    mask[0, ::2] = True  # 20 separate single pixels
    assert len(codec.mask_boxes(mask, max_boxes=5)) == 5
    assert codec.mask_boxes(mask, min_area=2) == []


# ---------------------------------------------------------------------------- PNG / base64


def test_mask_png_round_trip_keeps_size():
    mask = np.random.default_rng(0).random((17, 33)) > 0.5
    png = codec.mask_to_png(mask)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(codec.png_to_mask(png), mask)


def test_heatmap_png_and_summary():
    values = np.zeros((10, 20), dtype=np.float32)
    values[3, 7] = 1.0
    png = codec.heatmap_to_png(values)
    assert codec.png_to_mask(png)[3, 7] and codec.png_to_mask(png).sum() == 1
    s = codec.summarize(values)
    assert s["peak"] == [7, 3] and s["max"] == 1.0 and s["size"] == [10, 20]


@pytest.mark.parametrize("text", ["QUJD", "QUJD\n", "data:image/png;base64,QUJD", "QUI", "QUI="])
def test_b64decode_accepts_common_variants(text):
    assert codec.b64decode(text) in (b"ABC", b"AB")


@pytest.mark.parametrize("bad", ["not base64!", "QU JD$", 12])
def test_b64decode_rejects_with_input_error(bad):
    with pytest.raises(InputError):
        codec.b64decode(bad)


def test_overlay_keeps_size():
    from PIL import Image

    img = Image.new("RGB", (30, 20), (0, 0, 255))
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:10] = True
    out = codec.overlay(img, mask)
    assert out.size == (30, 20) and out.getpixel((7, 7)) != (0, 0, 255) and out.getpixel((0, 0)) == (0, 0, 255)


# ---------------------------------------------------------------------------- wire format


def test_wire_round_trip():
    items = [({"kind": "image"}, b"\x89PNGabc"), ({"kind": "tensor", "dtype": "float32", "shape": [1, 3, 2, 2]},
                                                 np.zeros((1, 3, 2, 2), np.float32).tobytes())]
    body = codec.pack_wire("explain", items)
    assert codec.is_wire(body) and not codec.is_wire(b"\x89PNG")
    op, got = codec.unpack_wire(body)
    assert op == "explain"
    assert [bytes(p) for _, p in got] == [p for _, p in items]
    assert got[1][0]["shape"] == [1, 3, 2, 2]


@pytest.mark.parametrize("body", [b"FSR1", b"FSR1\x00\x00\x00\x05{bad}", b"FSR1\x00\x00\x00\x02{}"])
def test_wire_malformed_is_input_error(body):
    with pytest.raises(InputError):
        codec.unpack_wire(body)


def test_wire_short_payload_is_input_error():
    body = codec.pack_wire("predict", [({"kind": "image"}, b"12345")])[:-2]
    with pytest.raises(InputError):
        codec.unpack_wire(body)


def frame(meta, payload: bytes = b"") -> bytes:
    """A frame with any header at all, as a forger would write it."""
    header = json.dumps(meta).encode()
    return codec.WIRE_MAGIC + len(header).to_bytes(4, "big") + header + payload


PIX = {"kind": "pixels", "shape": [4, 4, 3], "size": [30, 50]}


@pytest.mark.parametrize("meta, payload, message", [
    ({"op": "predict", "items": {"n": 1}}, b"x", '"items" must be a non-empty list'),
    ({"op": "predict", "items": []}, b"", '"items" must be a non-empty list'),
    (["op", "items"], b"", '"items" must be a non-empty list'),
    ({"op": "drop", "items": [{"kind": "image", "n": 1}]}, b"x", "unknown operation"),
    ({"op": "predict", "items": [{"kind": "image", "n": -1}]}, b"", "no byte count"),
    ({"op": "predict", "items": [{"kind": "image", "n": "5"}]}, b"12345", "no byte count"),
    ({"op": "predict", "items": [{"kind": "image", "n": True}]}, b"1", "no byte count"),
    ({"op": "predict", "items": [{"kind": "image", "n": 3}]}, b"12345", "add up to 3 bytes, the body holds 5"),
    ({"op": "predict", "items": [{"kind": "image", "n": 10**12}]}, b"12345", "add up to"),
    ({"op": "predict", "items": [{"kind": "pickle", "n": 1}]}, b"x", "unknown kind"),
    ({"op": "predict", "items": [{**PIX, "n": 47}]}, b"x" * 47, "declares 47 bytes"),
    ({"op": "predict", "items": [{**PIX, "shape": [4, 4, -3], "n": 48}]}, b"x" * 48, "shape must be"),
    ({"op": "predict", "items": [{**PIX, "shape": [4.0, 4, 3], "n": 48}]}, b"x" * 48, "shape must be"),
    ({"op": "predict", "items": [{**PIX, "size": [30], "n": 48}]}, b"x" * 48, "size must be"),
    ({"op": "predict", "items": [{**PIX, "size": [0, 50], "n": 48}]}, b"x" * 48, "size must be"),
    ({"op": "predict", "items": [{"kind": "tensor", "dtype": "float32", "shape": [1, 3, 2, 2], "n": 47}]},
     b"x" * 47, "declares 47 bytes for float32"),
    ({"op": "predict", "items": [{"kind": "tensor", "dtype": "S100", "shape": [1], "n": 100}]},
     b"x" * 100, "unknown dtype"),
])
def test_wire_forged_headers_are_one_line_input_errors(meta, payload, message):
    with pytest.raises(InputError, match=message) as info:
        codec.unpack_wire(frame(meta, payload))
    assert "\n" not in str(info.value) and not isinstance(info.value, PayloadTooLarge)


def test_wire_header_size_is_bounded():
    padded = {"op": "predict", "items": [{"kind": "image", "n": 1}], "pad": "x" * 40_000}
    with pytest.raises(InputError, match="header of"):
        codec.unpack_wire(frame(padded, b"x"))
    # a header length pointing past the body
    with pytest.raises(InputError, match="header of"):
        codec.unpack_wire(codec.WIRE_MAGIC + (1000).to_bytes(4, "big") + b"{}")


def test_wire_forged_sizes_are_413_before_any_allocation():
    """Frames of a few bytes that declare a 100000 x 100000 image (the mask it would be upsampled
    to is 40 GB of floats), a 7000 x 7000 tensor, more items than a request may hold, or more pixels
    than a request may cost (defaults: 40 MP an image, 64 images, 80 MP a request)."""
    huge = {**PIX, "size": [100_000, 100_000], "n": 48}
    with pytest.raises(PayloadTooLarge, match="100000x100000 image; the limit is 40 MP"):
        codec.unpack_wire(frame({"op": "predict", "items": [huge]}, b"x" * 48))
    tile = {"kind": "tensor", "dtype": "float32", "shape": [1, 3, 7000, 7000], "n": 3 * 7000 * 7000 * 4}
    with pytest.raises(PayloadTooLarge, match="7000x7000 tensors"):
        codec.unpack_wire(frame({"op": "predict", "items": [tile]}))
    many = [{"kind": "image", "n": 1}] * 65
    with pytest.raises(PayloadTooLarge, match="65 items in one request; the limit is 64"):
        codec.unpack_wire(frame({"op": "predict", "items": many}, b"x" * 65))
    rows = {"kind": "tensor", "dtype": "float32", "shape": [65, 3, 8, 8], "n": 65 * 3 * 64 * 4}
    with pytest.raises(PayloadTooLarge, match="65 images in one request; the limit is 64"):
        codec.unpack_wire(frame({"op": "predict", "items": [rows]}, b"\0" * rows["n"]))
    three = [{**PIX, "size": [6000, 6000], "n": 48}] * 3
    with pytest.raises(PayloadTooLarge, match="request declares 108 MP; the limit is 80 MP"):
        codec.unpack_wire(frame({"op": "predict", "items": three}, b"x" * 144))
    op, items = codec.unpack_wire(frame({"op": "predict", "items": three[:2]}, b"x" * 96))
    assert op == "predict" and [len(p) for _, p in items] == [48, 48]


# ---------------------------------------------------------------------------- packaging bits


def test_handler_stub_matches_repository_handler():
    from fissure.serving.package import HANDLER_STUB

    assert (REPO / "serving" / "handlers" / "fissure_handler.py").read_text() == HANDLER_STUB


def test_write_config_and_snapshot_merge(tmp_path):
    from fissure.serving.package import read_properties, read_snapshot, write_config

    cfg = tmp_path / "config.properties"
    write_config(cfg, {"a": {"1": {"marName": "a.mar", "batchSize": 4}}})
    models = read_snapshot(cfg)
    models["b"] = {"2": {"marName": "b.mar", "batchSize": 8}}
    write_config(cfg, models)
    props = read_properties(cfg)
    snap = json.loads(props["model_snapshot"])
    assert snap["modelCount"] == 2 and set(snap["models"]) == {"a", "b"}
    assert props["inference_address"].startswith("http://127.0.0.1:")
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_mode"] == "prometheus"
    assert props["install_py_dep_per_model"] == "false" and props["load_models"] == "all"


# ---------------------------------------------------------------------------- runtime (in-process)


@pytest.fixture(scope="module")
def runtimes():
    from fissure.models import build_model, default_spec
    from fissure.serving.runtime import ModelRuntime

    torch.manual_seed(0)
    cls_spec = default_spec("classify", width=8)
    seg_spec = default_spec("segment", base=8, depth=2, size=64)
    return ModelRuntime(build_model(cls_spec), cls_spec), ModelRuntime(build_model(seg_spec), seg_spec)


def test_runtime_classify_and_segment(runtimes, images):
    clf, seg = runtimes
    items = [clf.prepare_image(images.png(seed=s)) for s in range(3)]
    out = clf.predict(items)
    assert len(out) == 3 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in out)
    seg_out = seg.predict([seg.prepare_image(images.png(w=50, h=30))])[0]
    assert seg_out["size"] == [30, 50]
    mask = codec.rle_decode(seg_out["mask_rle"])
    assert np.array_equal(mask, codec.png_to_mask(codec.b64decode(seg_out["mask_png"])))
    assert seg_out["crack_ratio"] == pytest.approx(mask.mean(), abs=1e-6)


def test_runtime_batch_equals_single(runtimes, images):
    clf, _ = runtimes
    items = [clf.prepare_image(images.png(seed=s)) for s in range(4)]
    batch = clf.predict(items)
    single = [clf.predict([it])[0] for it in items]
    for a, b in zip(batch, single):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_runtime_tensor_checks(runtimes):
    clf, _ = runtimes
    ok = np.zeros((2, 3, 32, 40), np.float32)
    assert len(clf.prepare_tensor(ok.tobytes(), ok.shape)) == 2
    with pytest.raises(InputError, match="shape"):
        clf.prepare_tensor(np.zeros((2, 32, 40), np.float32).tobytes(), [2, 32, 40])
    with pytest.raises(InputError, match="FP32"):
        clf.prepare_tensor(np.zeros((1, 3, 8, 8)).tobytes(), [1, 3, 8, 8], "float64")
    with pytest.raises(InputError, match="does not match"):
        clf.prepare_tensor(b"\x00" * 10, [1, 3, 8, 8])


def test_runtime_pixels_from_the_front_equal_a_decoded_image(runtimes, images):
    """The front decodes and resizes (image_to_array, unstretched), the worker stretches and
    normalises: same input tensor as decoding in the worker, and the image's own size is kept
    for the mask."""
    from fissure.preprocess import decode_image, image_to_array

    _, seg = runtimes
    data = images.png(w=50, h=30)
    pixels = image_to_array(decode_image(data), seg.cfg, stretch=False)
    item = seg.prepare_pixels(pixels.tobytes(), pixels.shape, [30, 50])
    ref = seg.prepare_image(data)
    assert item.size == ref.size == (30, 50)
    assert torch.allclose(item.tensor, ref.tensor, atol=1e-6)
    assert seg.predict([item])[0]["mask_rle"] == seg.predict([ref])[0]["mask_rle"]
    with pytest.raises(InputError, match="pixels must be uint8"):
        seg.prepare_pixels(pixels[:-1].tobytes(), [pixels.shape[0] - 1, *pixels.shape[1:]], [30, 50])


def test_runtime_explain_shapes(runtimes, images):
    clf, seg = runtimes
    r = clf.explain([clf.prepare_image(images.png(w=70, h=40))])[0]
    assert r["method"] == "grad-cam" and r["summary"]["size"] == [40, 70]
    assert codec.png_to_mask(codec.b64decode(r["heatmap_png"])).shape == (40, 70)
    s = seg.explain([seg.prepare_image(images.png(w=70, h=40))])[0]
    assert s["method"] == "probability-map" and s["summary"]["size"] == [40, 70]


def test_runtime_bad_images_raise_typed_errors(runtimes, images):
    clf, _ = runtimes
    with pytest.raises(UnsupportedMediaType):
        clf.prepare_image(b"hello, not an image")
    with pytest.raises(InputError):
        clf.prepare_image(b"")
    with pytest.raises(PayloadTooLarge):
        clf.prepare_image(_bomb_png())


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (a decompression-bomb header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack("!IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets codec's filter
def test_png_to_mask_keeps_the_pixel_limit():
    """A server's mask PNG is decoded within FISSURE_MAX_IMAGE_PIXELS (40 MP) too: a bomb header
    is refused by Pillow's own limit (twice ours), one just over ours by the explicit check."""
    with pytest.raises(PayloadTooLarge, match="PNG refused as a decompression bomb"):
        codec.png_to_mask(_bomb_png())
    with pytest.raises(PayloadTooLarge, match="PNG of 7000x6000 is over the 40 MP limit"):
        codec.png_to_mask(_bomb_png(7000, 6000))
