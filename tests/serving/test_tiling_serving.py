"""Native-resolution serving: ModelRuntime (the in-process runtime's and the TorchServe handler's)
and the front for models whose spec says ``tiling.mode: tile``."""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fissure.errors import InputError
from fissure.models import build_model, default_spec
from fissure.models.tiling import grid_shape, model_pixels, unstretched_pixels
from fissure.preprocess import normalize
from fissure.serving import codec
from fissure.serving.runtime import ModelRuntime, OverBudget, PixelBudget


class PointwiseSegmenter(nn.Module):
    """Per-pixel logits: the tiled mask must equal the whole image's, pixel for pixel."""

    def forward(self, x):
        return (x[:, :1] - x[:, 2:3]) * 3.0


def _photo(h=700, w=1000, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[h // 3 : h // 3 + 3] = (255, 0, 0)  # a thin line the pointwise model marks
    return Image.fromarray(arr)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _spec(task: str, **tiling) -> dict:
    params = {"base": 8, "depth": 2, "size": 128} if task == "segment" else {"width": 8, "size": 128}
    spec = default_spec(task, **params)
    spec["tiling"] = {"mode": "tile", "overlap": 16, **tiling}
    return spec


def _mask(result) -> np.ndarray:
    return codec.rle_decode(result["mask_rle"])


def test_segmenter_mask_at_the_original_size_equals_the_whole_image_map():
    spec = _spec("segment")
    rt = ModelRuntime(PointwiseSegmenter(), spec)
    img = _photo()
    item = rt.prepare_image(_png(img), PixelBudget())
    assert item.native.shape == (700, 1000, 3) and item.tensor is None
    result = rt.predict([item])[0]
    assert result["size"] == [700, 1000]
    assert result["tiling"] == {"tile": 128, "overlap": 16, "tiles": 7 * 9, "scale": 1.0}
    pixels = torch.from_numpy(np.asarray(img).copy())[None]
    expected = (torch.sigmoid(PointwiseSegmenter()(normalize(pixels, rt.cfg)))[0, 0] >= rt.threshold).numpy()
    mask = _mask(result)
    assert mask.shape == (700, 1000)
    assert (mask == expected).mean() > 0.9999  # float rounding at the threshold only
    assert mask[700 // 3 + 1].mean() == 1.0  # the thin line survives at full resolution


def test_front_pixels_and_tensor_paths_give_the_same_mask():
    rt = ModelRuntime(PointwiseSegmenter(), _spec("segment"))
    img = _photo(333, 517, seed=2)  # odd sizes
    px = unstretched_pixels(img, rt.cfg, rt.tiling)
    assert px.shape == (333, 517, 3)
    by_pixels = rt.predict([rt.prepare_pixels(px.tobytes(), list(px.shape), [333, 517])])[0]
    by_image = rt.predict([rt.prepare_image(_png(img))])[0]
    assert by_pixels["mask_rle"] == by_image["mask_rle"] and by_pixels["size"] == [333, 517]
    t = normalize(torch.from_numpy(px.copy())[None], rt.cfg).contiguous().numpy().astype("<f4")
    by_tensor = rt.predict(rt.prepare_tensor(t.tobytes(), list(t.shape)))[0]
    assert by_tensor["size"] == [333, 517] and (_mask(by_tensor) == _mask(by_image)).mean() > 0.9999
    with pytest.raises(InputError, match=r"pixels must be uint8 \[333, 517, 3\]"):
        rt.prepare_pixels(bytes(128 * 128 * 3), [128, 128, 3], [333, 517])


def test_over_the_tiling_budget_the_image_is_downscaled_first_and_the_result_says_so():
    rt = ModelRuntime(PointwiseSegmenter(), _spec("segment", max_pixels=100_000))
    img = _photo()
    px = unstretched_pixels(img, rt.cfg, rt.tiling)
    assert px.shape[0] * px.shape[1] <= 100_000 and px.shape[:2] == (264, 377)
    result = rt.predict([rt.prepare_pixels(px.tobytes(), list(px.shape), [700, 1000])])[0]
    assert result["size"] == [700, 1000] and _mask(result).shape == (700, 1000)
    assert result["tiling"]["downscaled_to"] == [264, 377] and result["tiling"]["scale"] < 0.4
    assert "0.1 MP tiling budget" in result["tiling"]["note"]


def test_the_request_pixel_budget_counts_original_pixels():
    rt = ModelRuntime(PointwiseSegmenter(), _spec("segment"))
    budget = PixelBudget()
    budget.limit = 1_000_000
    rt.prepare_image(_png(_photo()), budget)
    with pytest.raises(OverBudget, match="FISSURE_MAX_REQUEST_PIXELS"):
        rt.prepare_image(_png(_photo()), budget)


def test_real_segmenter_tiles_a_1000x700_photo():
    spec = _spec("segment")
    torch.manual_seed(0)
    rt = ModelRuntime(build_model(spec), spec)
    result = rt.predict([rt.prepare_image(_png(_photo()))])[0]
    assert result["size"] == [700, 1000] and _mask(result).shape == (700, 1000)
    explained = rt.explain([rt.prepare_image(_png(_photo()))])[0]
    assert explained["summary"]["size"] == [700, 1000]


def test_classifier_keeps_its_label_and_adds_a_tile_map():
    spec = _spec("classify")
    torch.manual_seed(0)
    module = build_model(spec)
    tiled = ModelRuntime(module, spec)
    plain = ModelRuntime(module, {k: v for k, v in spec.items() if k != "tiling"})
    data = _png(_photo())
    result = tiled.predict([tiled.prepare_image(data)])[0]
    before = plain.predict([plain.prepare_image(data)])[0]
    assert {k: result[k] for k in before} == before  # existing outputs unchanged
    tm = result["tile_map"]
    rows, cols = grid_shape(700, 1000, tiled.tiling)
    assert tm["grid"] == [rows, cols] == [7, 9]
    assert len(tm["y"]) == rows and len(tm["x"]) == cols and tm["y"][-1] + tm["tile_px"][0] == 700
    assert np.asarray(tm["probabilities"]).shape == (rows, cols, 2)
    assert np.asarray(tm["crack"]).shape == (rows, cols)
    assert all(label in spec["classes"] for row in tm["labels"] for label in row)


def test_front_v1_and_v2_responses_for_tiling_models():
    """The front's hooks around the in-process runtime, in a child process: kserve's gRPC protos
    and tritonclient's (the other serving tests' client) cannot share one process."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_tiling_front.py"))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["v1_size"] == [700, 1000] and got["v1_tiles"] == 63
    assert got["declared"] == got["outputs"] == ["label", "probabilities", "score", "tile_map"]
    assert got["tile_grid"] == [7, 9]


def test_torchserve_handler_tiles_wire_pixels_and_raw_images(tmp_path, monkeypatch):
    """The MAR's handler (TorchServe's real Context and request decoding, no Java): the front's
    working-size pixels and a raw image both come back as masks at the image's own size."""
    ts_context = pytest.importorskip("ts.context", reason="TorchServe is not installed (pip install -e .[serve])")
    from ts.service import Service

    from fissure.serving.handler import FissureHandler
    from fissure.serving.runtime import META_FILE, SPEC_FILE, WEIGHTS_FILE

    spec = _spec("segment")
    torch.manual_seed(0)
    torch.save(build_model(spec).state_dict(), tmp_path / WEIGHTS_FILE)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    (tmp_path / META_FILE).write_text(json.dumps({"name": spec["name"], "version": "1"}))
    monkeypatch.setenv(codec.WIRE_TOKEN_ENV, "tok")
    threads = torch.get_num_threads()
    context = ts_context.Context(spec["name"], str(tmp_path), {"model": {}}, 8, None, "0.12.0")
    handler = FissureHandler()
    handler.initialize(context)
    try:
        img = _photo(301, 413, seed=3)
        px = unstretched_pixels(img, handler.runtime.cfg, handler.runtime.tiling)
        frame = codec.pack_wire("predict", [({"kind": "pixels", "shape": list(px.shape), "size": [301, 413]},
                                             px.tobytes())])
        reqs = [{"requestId": b"a", "parameters": [{"name": "body", "contentType": codec.WIRE_CONTENT_TYPE,
                                                     "value": bytearray(frame)}],
                 "headers": [{"name": codec.WIRE_HEADER.encode(), "value": b"tok"}]},
                {"requestId": b"b", "parameters": [{"name": "body", "contentType": "application/octet-stream",
                                                     "value": bytearray(_png(img))}], "headers": []}]
        processors, data, ids = Service.retrieve_data_for_inference(reqs)
        context.request_ids, context.request_processor = ids, processors
        wired, raw = [json.loads(o) for o in handler.handle(data, context)]
        wired = wired["results"][0][0]
        assert wired["size"] == raw["size"] == [301, 413] and wired["tiling"]["tiles"] == 12
        assert wired["mask_rle"] == raw["mask_rle"]
    finally:
        gc.unfreeze()  # initialize() froze the test process's objects: a worker's, not ours
        torch.set_num_threads(threads)


def _flat_photo(h=180, w=260, seed=3) -> Image.Image:
    """A low-contrast surface (grey spread ~5) with a faint reddish line, the kind a stretch lifts."""
    rng = np.random.default_rng(seed)
    grey = rng.normal(120.0, 5.0, (h, w))
    arr = np.stack([grey, grey - 2.0, grey - 4.0], axis=-1)
    arr[h // 2 : h // 2 + 2] += (6.0, 0.0, -6.0)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize("tiled", [True, False])
def test_a_contrast_stretching_spec_is_applied_alike_on_every_input_path(tiled):
    from fissure.preprocess import image_to_array, stretch_contrast

    spec = _spec("segment") if tiled else default_spec("segment", base=8, depth=2, size=128)
    spec["preprocess"]["gray_std"] = 24.0
    rt = ModelRuntime(PointwiseSegmenter(), spec)
    img = _flat_photo()
    px = model_pixels(img, rt.cfg, rt.tiling)
    raw = unstretched_pixels(img, rt.cfg, rt.tiling)  # what the front sends
    assert (raw == (np.asarray(img) if tiled else image_to_array(img, rt.cfg, stretch=False))).all()
    assert (px == stretch_contrast(raw, 24.0)).all()
    by_image = rt.predict([rt.prepare_image(_png(img))])[0]
    by_pixels = rt.predict([rt.prepare_pixels(raw.tobytes(), list(raw.shape), [180, 260])])[0]
    assert by_pixels["mask_rle"] == by_image["mask_rle"]
    # what the model saw was the stretched image: its mask, not the raw image's
    def mask_of(pixels):
        logits = PointwiseSegmenter()(normalize(torch.from_numpy(pixels.copy())[None], rt.cfg))
        mask = (torch.sigmoid(logits)[0, 0] >= rt.threshold).numpy().astype(np.uint8)
        return np.asarray(Image.fromarray(mask * 255).resize((260, 180), Image.NEAREST)) > 127 if not tiled else mask > 0
    stretched, unstretched = mask_of(px), mask_of(raw)
    assert (stretched != unstretched).mean() > 0.01
    assert (_mask(by_image) == stretched).mean() > 0.99


@pytest.mark.parametrize("surface", ["textured", "flat"])
def test_a_stretching_tiled_classifier_gets_the_same_inputs_from_the_front_as_from_an_image(surface):
    """The front sends a tiled classifier its working image unstretched; the worker stretches
    the tiles' image and the label's model-size image once each, as from a decoded image. A flat
    surface is the case that needs it: its stretch hits STRETCH_LIMITS, and stretching the
    stretched image again (what the worker did before) multiplied the factors."""
    from fissure.preprocess import STRETCH_LIMITS, gray_spread

    spec = _spec("classify")
    spec["preprocess"]["gray_std"] = 24.0
    rt = ModelRuntime(build_model(spec), spec)
    yy, xx = np.mgrid[0:360, 0:520]
    amp, noise = (16.0, 4.0) if surface == "textured" else (0.0, 1.5)
    grey = 120.0 + amp * np.sin(xx / 23.0) * np.cos(yy / 17.0) + np.random.default_rng(5).normal(0.0, noise, (360, 520))
    img = Image.fromarray(np.clip(np.stack([grey, grey - 2.0, grey - 4.0], axis=-1), 0, 255).round().astype(np.uint8))
    raw = unstretched_pixels(img, rt.cfg, rt.tiling)
    hits_the_limit = 24.0 / gray_spread(raw) > STRETCH_LIMITS[1]
    assert hits_the_limit == (surface == "flat")
    by_image = rt.prepare_image(_png(img))
    by_pixels = rt.prepare_pixels(raw.tobytes(), list(raw.shape), [360, 520])
    assert torch.equal(by_pixels.native, by_image.native)
    assert torch.equal(by_pixels.tensor, by_image.tensor)
    assert torch.equal(by_pixels.native, torch.from_numpy(model_pixels(img, rt.cfg, rt.tiling)))
    assert rt.predict([by_pixels])[0] == rt.predict([by_image])[0]
