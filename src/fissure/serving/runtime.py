"""The model side of serving, independent of TorchServe: decode, batch forward, postprocess.

The TorchServe handler (:mod:`fissure.serving.handler`) wraps a :class:`ModelRuntime`; so do
the in-process baselines of the serving benchmark. Decoding goes through
:mod:`fissure.preprocess`, the module training uses, so there is no train/serve skew.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fissure.errors import FissureError, InputError
from fissure.models import build_model, preprocess_config
from fissure.preprocess import decode_image, image_to_tensor, normalize, validate_tensor_batch
from fissure.serving import codec

WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"
META_FILE = "fissure-model.json"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8, "int8": torch.int8,
           "int16": torch.int16, "bool": torch.bool}


@dataclass
class Prepared:
    """One image ready for the model: normalised tensor [3, S, S] and the caller's size (h, w)."""

    tensor: torch.Tensor
    size: tuple[int, int]


def set_threads() -> int:
    """torch intra-op threads for a serving worker: FISSURE_TORCH_THREADS, else half the cores.

    The other half is for the protocol front and TorchServe's JVM; on a busy 2-core machine a
    second OpenMP thread made the forward pass ~50x slower (spinning against the front).
    """
    n = int(os.environ.get("FISSURE_TORCH_THREADS") or 0) or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


class ModelRuntime:
    def __init__(self, module: torch.nn.Module, spec: dict, meta: dict | None = None):
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.spec = spec
        self.meta = dict(meta or {})
        self.task = spec["task"]
        self.classes = list(spec.get("classes") or [])
        self.cfg = preprocess_config(spec)
        self.threshold = float(spec.get("threshold", 0.5))
        self.name = self.meta.get("name") or spec.get("name") or self.task
        self.version = str(self.meta.get("version") or "1")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> "ModelRuntime":
        """Rebuild from a directory holding weights.pt, spec.json and fissure-model.json (a MAR)."""
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / SPEC_FILE).read_text())
        meta_path = model_dir / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        module = build_model(spec)
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        return cls(module, spec, meta)

    # ------------------------------------------------------------------ inputs
    def prepare_image(self, data: bytes) -> Prepared:
        img = decode_image(bytes(data))
        return Prepared(image_to_tensor(img, self.cfg), (img.height, img.width))

    def prepare_pixels(self, data: bytes, shape, size) -> Prepared:
        """An image the front decoded and resized (uint8 [S, S, 3], see image_to_array)."""
        expected = [self.cfg.size, self.cfg.size, 3]
        if [int(s) for s in shape] != expected or len(data) != 3 * self.cfg.size ** 2:
            raise InputError(f"pixels must be uint8 {expected}, got shape {list(shape)}")
        pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(1, *expected)
        return Prepared(normalize(pixels, self.cfg)[0], (int(size[0]), int(size[1])))

    def prepare_tensor(self, data: bytes, shape, dtype: str = "float32") -> list[Prepared]:
        """Raw little-endian tensor bytes with a shape -> validated, resized items."""
        if dtype not in _DTYPES:
            raise InputError(f"tensor dtype must be FP32, got {dtype}")
        try:
            shape = [int(s) for s in shape]
            arr = np.frombuffer(bytes(data), dtype=np.dtype(dtype).newbyteorder("<"))
            arr = arr.reshape(shape)
        except (ValueError, TypeError) as exc:
            raise InputError(f"tensor data does not match shape {shape}: {exc}") from None
        tensor = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        if tensor.ndim == 4:
            sizes = [(int(tensor.shape[2]), int(tensor.shape[3]))] * int(tensor.shape[0])
        else:
            sizes = []
        batch = validate_tensor_batch(tensor, self.cfg)
        return [Prepared(t, s) for t, s in zip(batch, sizes)]

    # ------------------------------------------------------------------ predict
    def predict(self, items: list[Prepared]) -> list[dict]:
        if not items:
            return []
        batch = torch.stack([p.tensor for p in items])
        with torch.inference_mode():
            out = self.module(batch)
        if self.task == "classify":
            return self._classify(out, items)
        return self._segment(out, items)

    def _classify(self, logits: torch.Tensor, items) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=1).numpy()
        names = self.classes or [str(i) for i in range(probs.shape[1])]
        results = []
        for row in probs:
            k = int(row.argmax())
            results.append({
                "label": names[k],
                "score": round(float(row[k]), 6),
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)},
            })
        return results

    def _probability_maps(self, logits: torch.Tensor, items) -> list[np.ndarray]:
        probs = torch.sigmoid(logits.float())
        maps = []
        for p, item in zip(probs, items):
            if tuple(p.shape[-2:]) != item.size:
                p = F.interpolate(p[None], size=item.size, mode="bilinear", align_corners=False)[0]
            maps.append(p[0].numpy())
        return maps

    def _segment(self, logits: torch.Tensor, items) -> list[dict]:
        results = []
        for prob in self._probability_maps(logits, items):
            mask = prob >= self.threshold
            results.append({
                "size": [int(mask.shape[0]), int(mask.shape[1])],
                "crack_ratio": round(float(mask.mean()), 6),
                "boxes": codec.mask_boxes(mask),
                "mask_rle": codec.rle_encode(mask),
                "mask_png": codec.b64encode(codec.mask_to_png(mask)),
            })
        return results

    # ------------------------------------------------------------------ explain
    def explain(self, items: list[Prepared]) -> list[dict]:
        """Grad-CAM (classifier, on ``module.cam_layer``) or the probability map (segmenter)."""
        if not items:
            return []
        batch = torch.stack([p.tensor for p in items])
        if self.task != "classify":
            with torch.inference_mode():
                maps = self._probability_maps(self.module(batch), items)
            return [{"method": "probability-map", "heatmap_png": codec.b64encode(codec.heatmap_to_png(m)),
                     "summary": codec.summarize(m)} for m in maps]
        layer = getattr(self.module, "cam_layer", None)
        if layer is None:
            raise FissureError("this classifier has no cam_layer to explain")
        acts = {}
        hook = layer.register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
        try:
            with torch.enable_grad():
                x = batch.clone().requires_grad_(True)
                logits = self.module(x)
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
            cam = (cam / top if top > 0 else cam).numpy()
            results.append({
                "method": "grad-cam", "target": names[t], "score": round(float(p[t]), 6),
                "heatmap_png": codec.b64encode(codec.heatmap_to_png(cam)), "summary": codec.summarize(cam),
            })
        return results


def error_result(exc: Exception) -> dict:
    """One-line error entry for a failed item (no traceback text)."""
    if isinstance(exc, FissureError):
        return {"error": exc.message.splitlines()[0] if exc.message else type(exc).__name__,
                "status": int(exc.http_status)}
    return {"error": f"internal error: {type(exc).__name__}", "status": 500}
