"""Native-resolution inference: overlapping tiles of the model's input size, blended back.

A model trained on 256-pixel crops sees a 12-megapixel photo resized to 256 pixels as a blur in
which thin cracks are gone. With tiling the image keeps its own resolution (up to a pixel
budget): it is cut into overlapping tiles of the model's size, the tiles go through the model in
batches, and the per-tile probability maps are blended with a raised-cosine window, normalised
by the summed weights, so the map is a convex combination of the tiles' values at every pixel
(no seams where tiles meet; a pointwise model gives exactly the whole-image map).

The spec says how (``spec["tiling"]``, read by :func:`tiling_config`)::

    {"mode": "tile", "tile": 256, "overlap": 32, "max_pixels": 16000000, "batch": 16}

A spec without it (every model trained before this module) is served as before: the whole
image resized to the model's size (``mode: resize``). Serving (fissure.serving.runtime) and
``fissure evaluate --native`` both run through this module.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch.nn import functional as F

from fissure.errors import ConfigError
from fissure.preprocess import PreprocessConfig, image_to_array, normalize, stretch_contrast


class TilingConfig(BaseModel):
    """How a model sees images larger than its input (``spec["tiling"]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["resize", "tile"] = Field("resize", description="resize: the whole image at the model's size; "
                                            "tile: overlapping tiles at the image's own resolution")
    tile: int = Field(256, ge=8, description="tile side in pixels (the model's input size)")
    overlap: int = Field(32, ge=0, description="pixels shared by neighbouring tiles, blended")
    max_pixels: int = Field(16_000_000, gt=0, description="larger images are downscaled to this many pixels first")
    batch: int = Field(16, ge=1, description="tiles per forward pass")

    @model_validator(mode="after")
    def _overlap_below_tile(self):
        if self.overlap >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than the tile ({self.tile})")
        return self

    @property
    def tiles(self) -> bool:
        return self.mode == "tile"

    @property
    def stride(self) -> int:
        return self.tile - self.overlap


def tiling_config(spec: dict, native: bool | None = None) -> TilingConfig:
    """The spec's tiling (tile side defaults to the preprocess size); ``native`` True/False
    overrides the mode (``fissure evaluate --native``), None keeps the spec's."""
    data = dict(spec.get("tiling") or {})
    data.setdefault("tile", PreprocessConfig.from_dict(spec.get("preprocess")).size)
    # the default overlap must fit small models too (a 32-pixel classifier patch)
    data.setdefault("overlap", min(TilingConfig.model_fields["overlap"].default, int(data["tile"]) // 4))
    if native is not None:
        data["mode"] = "tile" if native else "resize"
    try:
        return TilingConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "tiling"
        raise ConfigError(f"model spec tiling.{where}: {err['msg']}") from None


def working_size(h: int, w: int, cfg: TilingConfig) -> tuple[int, int]:
    """The size an h x w image is tiled at: its own, or downscaled to ``cfg.max_pixels``."""
    if h * w <= cfg.max_pixels:
        return h, w
    scale = math.sqrt(cfg.max_pixels / (h * w))
    return max(1, int(h * scale)), max(1, int(w * scale))


def tile_positions(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride`` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def grid_shape(h: int, w: int, cfg: TilingConfig) -> tuple[int, int]:
    """(rows, cols) of tiles for an h x w working image."""
    return len(tile_positions(h, cfg.tile, cfg.stride)), len(tile_positions(w, cfg.tile, cfg.stride))


def blend_window(tile: int, overlap: int) -> torch.Tensor:
    """[tile, tile] weights: a raised-cosine ramp over ``overlap`` pixels at each edge, 1 inside.

    Never zero (the ramp starts half a pixel in), so a pixel that only one tile covers (the
    image's border) still gets that tile's value exactly after normalisation; near a tile's
    edge, where its model saw little context, its neighbour's weight dominates.
    """
    ramp = torch.ones(tile, dtype=torch.float32)
    if overlap > 0:
        i = torch.arange(overlap, dtype=torch.float64)
        up = (0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / overlap)).float()
        ramp[:overlap] = up
        ramp[tile - overlap:] = torch.minimum(ramp[tile - overlap:], up.flip(0))
    return ramp[:, None] * ramp[None, :]


def to_pixels(img: Image.Image, cfg: TilingConfig) -> np.ndarray:
    """RGB image -> uint8 [H', W', 3] at its working size (its own size within the budget)."""
    h, w = working_size(img.height, img.width, cfg)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)
    return np.array(img, dtype=np.uint8)


def unstretched_pixels(img: Image.Image, pcfg: PreprocessConfig, cfg: TilingConfig) -> np.ndarray:
    """``img`` at the size the model worker is sent it: uint8 [S, S, 3] (resize) or [H', W', 3]
    (tile), before any contrast stretch."""
    return to_pixels(img, cfg) if cfg.tiles else image_to_array(img, pcfg, stretch=False)


def model_pixels(img: Image.Image, pcfg: PreprocessConfig, cfg: TilingConfig) -> np.ndarray:
    """What the model worker is sent for ``img``: :func:`unstretched_pixels`, contrast stretched as
    ``pcfg`` says (in tile mode the whole working image, before tiling)."""
    return stretch_contrast(unstretched_pixels(img, pcfg, cfg), pcfg.gray_std)


def _crops(image: torch.Tensor, boxes, pcfg: PreprocessConfig, tile: int) -> torch.Tensor:
    """Normalised [n, 3, tile, tile] crops of ``image`` (uint8 [H, W, 3] or float [3, H, W]);
    crops of an image smaller than a tile are padded by repeating its edge."""
    out = []
    for y, x, th, tw in boxes:
        if image.dtype == torch.uint8:
            crop = normalize(image[y : y + th, x : x + tw][None], pcfg)[0]
        else:
            crop = image[:, y : y + th, x : x + tw]
        if (th, tw) != (tile, tile):
            crop = F.pad(crop[None], (0, tile - tw, 0, tile - th), mode="replicate")[0]
        out.append(crop)
    return torch.stack(out).contiguous(memory_format=torch.channels_last)


def _boxes(h: int, w: int, cfg: TilingConfig) -> list[tuple[int, int, int, int]]:
    ys, xs = tile_positions(h, cfg.tile, cfg.stride), tile_positions(w, cfg.tile, cfg.stride)
    return [(y, x, min(cfg.tile, h), min(cfg.tile, w)) for y in ys for x in xs]


def image_hw(image: torch.Tensor) -> tuple[int, int]:
    """(H, W) of uint8 [H, W, 3] pixels or a float [3, H, W] tensor."""
    return (int(image.shape[0]), int(image.shape[1])) if image.dtype == torch.uint8 else (
        int(image.shape[1]), int(image.shape[2]))


def predict_map(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, pcfg: PreprocessConfig,
                cfg: TilingConfig, device: str | torch.device = "cpu") -> tuple[torch.Tensor, int]:
    """Blended per-pixel map [C, H, W] (on ``device``) of ``image`` and the number of tiles.

    ``forward`` takes normalised tiles [n, 3, t, t] on ``device`` and returns per-pixel values
    [n, C, t, t] (probabilities: blending logits would blend a different quantity).
    """
    device = torch.device(device)
    h, w = image_hw(image)
    boxes = _boxes(h, w, cfg)
    window = blend_window(cfg.tile, cfg.overlap).to(device)
    acc = weight = None
    for start in range(0, len(boxes), cfg.batch):
        chunk = boxes[start : start + cfg.batch]
        out = forward(_crops(image, chunk, pcfg, cfg.tile).to(device, non_blocking=True)).float()
        if acc is None:
            acc = torch.zeros(out.shape[1], h, w, device=device)
            weight = torch.zeros(h, w, device=device)
        for (y, x, th, tw), o in zip(chunk, out):
            win = window[:th, :tw]
            acc[:, y : y + th, x : x + tw] += o[:, :th, :tw] * win
            weight[y : y + th, x : x + tw] += win
    return acc.div_(weight), len(boxes)


def predict_grid(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, pcfg: PreprocessConfig,
                 cfg: TilingConfig, device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-tile outputs [rows, cols, C] (a classifier's class probabilities per tile)."""
    h, w = image_hw(image)
    boxes = _boxes(h, w, cfg)
    rows, cols = grid_shape(h, w, cfg)
    outs = [forward(_crops(image, boxes[s : s + cfg.batch], pcfg, cfg.tile).to(device, non_blocking=True)).float().cpu()
            for s in range(0, len(boxes), cfg.batch)]
    return torch.cat(outs).view(rows, cols, -1)


def segment_probabilities(module: torch.nn.Module, image: torch.Tensor, pcfg: PreprocessConfig,
                          cfg: TilingConfig, out_size: tuple[int, int] | None = None,
                          device: str | torch.device = "cpu") -> tuple[torch.Tensor, int]:
    """A segmenter's crack probabilities [H, W] for ``image`` at its working size, mapped to
    ``out_size`` (the original pixels; bilinear when the image was downscaled), and the tile count."""
    prob, n = predict_map(lambda x: torch.sigmoid(module(x).float()), image, pcfg, cfg, device)
    if out_size is not None and tuple(prob.shape[-2:]) != tuple(out_size):
        prob = F.interpolate(prob[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return prob[0], n


def describe(cfg: TilingConfig, original: tuple[int, int], working: tuple[int, int], tiles: int) -> dict:
    """What a result says about how it was computed (``"tiling"`` in serving's results)."""
    scale = working[0] / original[0] if tuple(working) != tuple(original) else 1.0
    info = {"tile": cfg.tile, "overlap": cfg.overlap, "tiles": tiles, "scale": round(scale, 6)}
    if scale != 1.0:
        info["downscaled_to"] = [int(working[0]), int(working[1])]
        info["note"] = (f"image over the {cfg.max_pixels / 1e6:.3g} MP tiling budget: downscaled "
                        f"to {working[1]}x{working[0]} before tiling")
    return info
