"""The model side of serving, independent of TorchServe: decode, batch forward, postprocess.

The TorchServe handler (:mod:`fissure.serving.handler`) wraps a :class:`ModelRuntime`; so do
the in-process baselines of the serving benchmark. Decoding goes through
:mod:`fissure.preprocess`, the module training uses, so there is no train/serve skew.

Models whose spec says ``tiling.mode: tile`` see images at their own resolution (up to the
tiling budget) in overlapping tiles (:mod:`fissure.models.tiling`); the others see the whole
image resized to the model's size, as before.

Every input is checked against the pixel limits (``FISSURE_MAX_IMAGE_PIXELS`` per image, and,
with a :class:`PixelBudget`, ``FISSURE_MAX_REQUEST_PIXELS`` per request) before anything of its
size is allocated: declared shapes and sizes are numbers a caller chose.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from fissure.errors import FissureError, InputError, PayloadTooLarge, status_of
from fissure.models import build_model, preprocess_config
from fissure.models import tiling as T
from fissure.models import tta
from fissure.models.masks import crack_mask, mask_params
from fissure.preprocess import (finish_decode, image_to_tensor, normalize, open_image,
                                stretch_contrast, validate_tensor_batch)
from fissure.serving import codec
from fissure.settings import settings

WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"
META_FILE = "fissure-model.json"


@dataclass
class Prepared:
    """One image ready for the model: normalised tensor [3, S, S] and the caller's size (h, w).

    With tiling, ``native`` holds the image at its working size (uint8 [H', W', 3] pixels, or a
    caller's float [3, H', W'] tensor), normalised tile by tile; ``tensor`` is then only there
    for a classifier's whole-image label (None for a segmenter).
    """

    tensor: torch.Tensor | None
    size: tuple[int, int]
    native: torch.Tensor | None = None


class OverBudget(PayloadTooLarge):
    """The request as a whole is over a limit: it fails as one, not item by item."""


class PixelBudget:
    """Pixels one request may still cost (decoded images, upsampled masks): FISSURE_MAX_REQUEST_PIXELS."""

    def __init__(self):
        self.limit = settings().max_request_pixels
        self.spent = 0

    def spend(self, pixels: int) -> None:
        self.spent += pixels
        if self.spent > self.limit:
            raise OverBudget(f"the images of this request add up to more than {self.limit / 1e6:.3g} MP, "
                             "the limit per request (FISSURE_MAX_REQUEST_PIXELS)")


def set_threads() -> int:
    """torch intra-op threads for a serving worker: FISSURE_TORCH_THREADS, else half the cores.

    The other half is for the protocol front and TorchServe's JVM; on a busy 2-core machine a
    second OpenMP thread made the forward pass ~50x slower (spinning against the front).
    """
    n = settings().torch_threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(n)
    return torch.get_num_threads()


def device_for(gpu_id, cuda_available: bool) -> torch.device:
    """The device a worker runs on: TorchServe's ``gpu_id`` when CUDA is there, else the CPU."""
    if gpu_id is None or not cuda_available:
        return torch.device("cpu")
    return torch.device("cuda", int(gpu_id))


class ModelRuntime:
    """One model ready to serve on ``device``: inputs are prepared on the CPU, moved for the
    forward pass, and results come back as plain Python (CPU) values."""

    def __init__(self, module: torch.nn.Module, spec: dict, meta: dict | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        # the views the spec averages (a model loaded by fissure.models.io already has them)
        self.module = tta.wrap(module, spec.get("tta")).to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.spec = spec
        self.meta = dict(meta or {})
        self.task = spec["task"]
        self.classes = list(spec.get("classes") or [])
        self.cfg = preprocess_config(spec)
        self.tiling = T.tiling_config(spec)
        self.threshold, self.threshold_low = mask_params(spec)
        self.name = self.meta.get("name") or spec.get("name") or self.task
        self.version = str(self.meta.get("version") or "1")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> "ModelRuntime":
        """Rebuild from a directory holding weights.pt, spec.json and fissure-model.json (a MAR)."""
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / SPEC_FILE).read_text())
        meta_path = model_dir / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        module = build_model(spec, pretrained=False)  # the weights file holds every weight
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        return cls(module, spec, meta, device=device)

    # ------------------------------------------------------------------ inputs
    def prepare_image(self, data: bytes, budget: PixelBudget | None = None) -> Prepared:
        """Encoded image bytes -> an item; the size its header declares is checked (and spent
        from ``budget``) before the pixels are decoded."""
        img = open_image(bytes(data))
        if budget is not None:
            budget.spend(img.width * img.height)
        img = finish_decode(img)
        if self.tiling.tiles:
            return self._tiled_pixels(T.unstretched_pixels(img, self.cfg, self.tiling), (img.height, img.width), img)
        return Prepared(image_to_tensor(img, self.cfg), (img.height, img.width))

    def _tiled_pixels(self, raw: np.ndarray, size: tuple[int, int], img: Image.Image | None = None) -> Prepared:
        """A tiling item from the unstretched working image ``raw``. Each input is stretched once:
        the working image for the tiles, and for a classifier the whole image at model size for
        its label (made from the decoded image when there is one: the same pixels as without
        tiling). Stretching the stretched working image again would compound the factors where
        the first stretch hit STRETCH_LIMITS (a nearly flat surface)."""
        native = torch.from_numpy(stretch_contrast(raw, self.cfg.gray_std))
        whole = None
        if self.task == "classify":
            whole = image_to_tensor(img if img is not None else Image.fromarray(raw), self.cfg)
        return Prepared(whole, size, native)

    def prepare_pixels(self, data: bytes, shape, size, budget: PixelBudget | None = None) -> Prepared:
        """An image the front decoded and resized, not yet contrast stretched (uint8 [S, S, 3],
        or with tiling uint8 [H', W', 3] at the working size: tiling.unstretched_pixels); the
        stretch is done here, as for an image decoded here.

        ``size`` [h, w] is the image's own size, which masks and heatmaps are upsampled to: it is
        checked against the pixel limits before anything of that size exists.
        """
        h, w = _image_size(size)
        hw = T.working_size(h, w, self.tiling) if self.tiling.tiles else (self.cfg.size, self.cfg.size)
        expected = [*hw, 3]
        if _ints(shape) != expected or len(data) != 3 * hw[0] * hw[1]:
            raise InputError(f"pixels must be uint8 {expected}, got shape {shape!r} and {len(data)} bytes")
        if budget is not None:
            budget.spend(h * w)
        pixels = np.frombuffer(bytearray(data), dtype=np.uint8).reshape(expected)  # writable: torch shares it
        if self.tiling.tiles:
            return self._tiled_pixels(pixels, (h, w))
        return Prepared(normalize(torch.from_numpy(stretch_contrast(pixels, self.cfg.gray_std))[None], self.cfg)[0], (h, w))

    def prepare_tensor(self, data: bytes, shape, dtype: str = "float32",
                       budget: PixelBudget | None = None) -> list[Prepared]:
        """Raw little-endian FP32 bytes of shape [N, 3, H, W] -> validated, resized items.

        The shape is checked against the data's length and the limits (N images of H x W
        pixels each) before the bytes are copied.
        """
        if dtype != "float32":
            raise InputError(f"tensor dtype must be FP32, got {dtype}")
        dims = _ints(shape)
        if dims is None or len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
            raise InputError(f"tensor shape must be [N,3,H,W], got {dims if dims is not None else shape!r}")
        n, _, h, w = dims
        limits = settings()
        if n > limits.max_items:
            raise PayloadTooLarge(f"tensor of {n} images; the limit is {limits.max_items} per request (FISSURE_MAX_ITEMS)")
        _image_size([h, w])
        if n * 3 * h * w * 4 != len(data):
            raise InputError(f"tensor data does not match shape {dims}: {len(data)} bytes for {n * 3 * h * w} floats")
        if budget is not None:
            budget.spend(n * h * w)
        arr = np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32)  # one native, writable copy
        batch = validate_tensor_batch(torch.from_numpy(arr), self.cfg, resize=not self.tiling.tiles)
        if not self.tiling.tiles:
            return [Prepared(t, (h, w)) for t in batch]
        wh = T.working_size(h, w, self.tiling)
        if wh != (h, w):
            batch = F.interpolate(batch, size=wh, mode="bilinear", align_corners=False, antialias=True)
        if self.task != "classify":
            return [Prepared(None, (h, w), t) for t in batch]
        whole = F.interpolate(batch, size=(self.cfg.size, self.cfg.size), mode="bilinear", align_corners=False)
        return [Prepared(c, (h, w), t) for c, t in zip(whole, batch)]

    # ------------------------------------------------------------------ predict
    def predict(self, items: list[Prepared]) -> list[dict]:
        if not items:
            return []
        if self.tiling.tiles and self.task != "classify":
            with torch.inference_mode():
                return [self._segment_result(*self._tiled_map(item)) for item in items]
        batch = self._batch(items)
        with torch.inference_mode():
            out = self.module(batch)
        if self.task == "classify":
            results = self._classify(out, items)
            if self.tiling.tiles:
                with torch.inference_mode():
                    for result, item in zip(results, items):
                        result["tile_map"] = self._tile_map(item)
            return results
        return self._segment(out, items)

    def _batch(self, items: list[Prepared]) -> torch.Tensor:
        return torch.stack([p.tensor for p in items]).to(self.device, non_blocking=True)

    def _names(self, n: int) -> list[str]:
        return self.classes or [str(i) for i in range(n)]

    def _classify(self, logits: torch.Tensor, items) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        names = self._names(probs.shape[1])
        results = []
        for row in probs:
            k = int(row.argmax())
            results.append({
                "label": names[k],
                "score": round(float(row[k]), 6),
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)},
            })
        return results

    def _probability_maps(self, logits: torch.Tensor, items, probs: torch.Tensor | None = None) -> list[np.ndarray]:
        if probs is None:
            probs = torch.sigmoid(logits.float())
        maps = []
        for p, item in zip(probs, items):
            if tuple(p.shape[-2:]) != item.size:
                p = F.interpolate(p[None], size=item.size, mode="bilinear", align_corners=False)[0]
            maps.append(p[0].cpu().numpy())
        return maps

    def _segment(self, logits: torch.Tensor, items) -> list[dict]:
        probs = torch.sigmoid(logits.float())
        # confidence: mean over pixels of max(p, 1 - p), at model size as the training profile's
        # (drift.segmenter_confidence), so a 12 MP mask costs no extra pass
        confidence = torch.maximum(probs, 1 - probs).flatten(1).mean(1).tolist()
        return [self._segment_result(prob, conf)
                for prob, conf in zip(self._probability_maps(logits, items, probs), confidence)]

    def _segment_result(self, prob: np.ndarray, confidence: float, tiling: dict | None = None) -> dict:
        mask = crack_mask(prob, self.threshold, self.threshold_low)
        result = {
            "size": [int(mask.shape[0]), int(mask.shape[1])],
            "crack_ratio": round(float(mask.mean()), 6),
            "confidence": round(float(confidence), 6),
            "boxes": codec.mask_boxes(mask),
            "mask_rle": codec.rle_encode(mask),
            "mask_png": codec.b64encode(codec.mask_to_png(mask)),
        }
        if tiling is not None:
            result["tiling"] = tiling
        return result

    # ------------------------------------------------------------------ tiling
    def _tiled_map(self, item: Prepared) -> tuple[np.ndarray, float, dict]:
        """(crack probabilities at the image's own size, confidence, how it was tiled).

        Confidence here is over the tiled map, at the working size: with tiling there is no
        model-size map (the drift profile's was made at model size; see docs/serving.md)."""
        working = T.image_hw(item.native)
        prob, n = T.segment_probabilities(self.module, item.native, self.cfg, self.tiling, device=self.device)
        confidence = float(torch.maximum(prob, 1 - prob).mean())
        if working != tuple(item.size):
            prob = F.interpolate(prob[None, None], size=item.size, mode="bilinear", align_corners=False)[0, 0]
        return prob.cpu().numpy(), confidence, T.describe(self.tiling, item.size, working, n)

    def _tile_map(self, item: Prepared) -> dict:
        """A classifier's class probabilities per tile, with each tile's place in original pixels."""
        working = T.image_hw(item.native)
        grid = T.predict_grid(lambda x: torch.softmax(self.module(x).float(), dim=1), item.native, self.cfg,
                              self.tiling, self.device).numpy()
        names = self._names(grid.shape[-1])
        sy, sx = item.size[0] / working[0], item.size[1] / working[1]
        tile_map = {
            **T.describe(self.tiling, item.size, working, grid.shape[0] * grid.shape[1]),
            "grid": [int(grid.shape[0]), int(grid.shape[1])],
            "y": [round(y * sy) for y in T.tile_positions(working[0], self.tiling.tile, self.tiling.stride)],
            "x": [round(x * sx) for x in T.tile_positions(working[1], self.tiling.tile, self.tiling.stride)],
            "tile_px": [min(item.size[0], round(self.tiling.tile * sy)), min(item.size[1], round(self.tiling.tile * sx))],
            "classes": names,
            "labels": [[names[int(k)] for k in row] for row in grid.argmax(-1)],
            "probabilities": np.round(grid, 4).tolist(),
        }
        if "crack" in names:
            tile_map["crack"] = np.round(grid[..., names.index("crack")], 4).tolist()
        return tile_map

    # ------------------------------------------------------------------ explain
    def explain(self, items: list[Prepared]) -> list[dict]:
        """Grad-CAM (classifier, on ``module.cam_layer``) or the probability map (segmenter)."""
        if not items:
            return []
        if self.task != "classify":
            with torch.inference_mode():
                if self.tiling.tiles:
                    maps = [self._tiled_map(item)[0] for item in items]
                else:
                    maps = self._probability_maps(self.module(self._batch(items)), items)
            return [{"method": "probability-map", "heatmap_png": codec.b64encode(codec.heatmap_to_png(m)),
                     "summary": codec.summarize(m)} for m in maps]
        batch = self._batch(items)
        plain = tta.unwrap(self.module)  # Grad-CAM follows one forward pass, the image as it is
        layer = getattr(plain, "cam_layer", None)
        if layer is None:
            raise FissureError("this classifier has no cam_layer to explain")
        acts = {}
        hook = layer.register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
        try:
            with torch.enable_grad():
                x = batch.clone().requires_grad_(True)
                logits = plain(x)
                target = logits.argmax(dim=1)
                score = logits.gather(1, target[:, None]).sum()
                grads = torch.autograd.grad(score, acts["a"])[0]
        finally:
            hook.remove()
        act = acts["a"].detach()
        cams = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
        probs = torch.softmax(logits.detach(), dim=1)
        names = self.classes or [str(i) for i in range(logits.shape[1])]
        results = []
        for cam, item, t, p in zip(cams, items, target.tolist(), probs):
            cam = F.interpolate(cam[None], size=item.size, mode="bilinear", align_corners=False)[0, 0]
            top = float(cam.max())
            cam = (cam / top if top > 0 else cam).cpu().numpy()
            results.append({
                "method": "grad-cam", "target": names[t], "score": round(float(p[t]), 6),
                "heatmap_png": codec.b64encode(codec.heatmap_to_png(cam)), "summary": codec.summarize(cam),
            })
        return results


def error_result(exc: BaseException) -> dict:
    """One-line error entry for a failed item (no traceback text), status as errors.status_of maps it."""
    status, _code, message = status_of(exc)
    return {"error": message, "status": status}


def _ints(values) -> list[int] | None:
    """A shape as a list of ints, or None when it is not one (floats, bools, strings)."""
    if not isinstance(values, (list, tuple)):
        return None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return None
    return [int(v) for v in values]


def _image_size(size) -> tuple[int, int]:
    """A declared image size [h, w], checked against FISSURE_MAX_IMAGE_PIXELS."""
    hw = _ints(size)
    if hw is None or len(hw) != 2 or min(hw) < 1:
        raise InputError(f"image size must be [height, width], got {size!r}")
    limit = settings().max_image_pixels
    if hw[0] * hw[1] > limit:
        raise PayloadTooLarge(f"image size {hw[0]}x{hw[1]} is over the {limit / 1e6:.3g} MP limit "
                              "(FISSURE_MAX_IMAGE_PIXELS)")
    return hw[0], hw[1]
