"""Classification patches (``crack`` / ``no_crack``) cut from a segmentation set.

A tile of ``size`` x ``size`` pixels every ``stride`` pixels is labelled from its mask:

- ``crack`` when the crack-pixel fraction is at least ``threshold`` *and* its largest connected
  crack piece spans at least ``min_length`` pixels (a few stray pixels are not a crack);
- ``no_crack`` when the tile, grown by ``margin`` pixels on every side, has no crack pixel at
  all (so a crack just outside the tile, or a slightly too-thin mask, cannot leak in);
- anything else is ambiguous and skipped.

Labels are decided from the masks first; images are then read once to write the chosen tiles.
With ``balance`` the larger class is subsampled with a seeded RNG to the size of the smaller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from fissure.data.loaders import PATCH_MASKS as MASKS, SegmentationItem, patch_mask, segmentation_items
from fissure.errors import DataError
from fissure.preprocess import load_image, load_mask
from fissure.progress import iterate

CLASSES = ("no_crack", "crack")
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class PatchSpec:
    size: int = 96
    stride: int = 96
    threshold: float = 0.01
    min_length: int | None = None  # default: size // 4
    margin: int = 8
    balance: bool = True
    seed: int = 0
    max_per_class: int | None = None
    quality: int = 95
    strict_balance: bool = True  # False: when one class is empty, keep the other unbalanced

    def check(self) -> "PatchSpec":
        if self.size < 8:
            raise DataError(f"patch size must be at least 8 pixels (got {self.size})")
        if self.stride < 1:
            raise DataError(f"patch stride must be at least 1 pixel (got {self.stride})")
        if not 0 < self.threshold < 1:
            raise DataError(f"patch threshold must be a fraction in (0, 1) (got {self.threshold})")
        if self.margin < 0:
            raise DataError(f"patch margin must be >= 0 (got {self.margin})")
        if self.min_length is not None and self.min_length < 0:
            raise DataError(f"minimum crack length must be >= 0 pixels (got {self.min_length})")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise DataError(f"patches per class must be at least 1 (got {self.max_per_class})")
        if self.seed < 0:
            raise DataError(f"patch seed must be >= 0 (got {self.seed})")
        return self

    @property
    def length(self) -> int:
        return self.size // 4 if self.min_length is None else self.min_length


def tile_origins(h: int, w: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the tiles that fit in an h x w image."""
    if h < size or w < size:
        return []
    return [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def label_tile(mask: np.ndarray, y: int, x: int, spec: PatchSpec) -> str | None:
    """'crack', 'no_crack' or None (ambiguous) for the tile at (y, x) of a boolean mask."""
    s, m = spec.size, spec.margin
    tile = mask[y:y + s, x:x + s]
    n = int(tile.sum())
    if n == 0:
        around = mask[max(0, y - m):y + s + m, max(0, x - m):x + s + m]
        return "no_crack" if not around.any() else None
    if n / tile.size < spec.threshold:
        return None
    labels, count = ndimage.label(tile, structure=_EIGHT)
    if count == 0:
        return None
    extents = ndimage.find_objects(labels)
    longest = max(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for sl in extents)
    return "crack" if longest >= spec.length else None


def label_mask(mask: np.ndarray, spec: PatchSpec) -> list[tuple[int, int, str]]:
    h, w = mask.shape
    out = []
    for y, x in tile_origins(h, w, spec.size, spec.stride):
        label = label_tile(mask, y, x, spec)
        if label is not None:
            out.append((y, x, label))
    return out


def select_patches(items: list[SegmentationItem], spec: PatchSpec,
                   progress: bool | None = None) -> dict[str, list[tuple[int, int, int]]]:
    """(item index, y, x) of the tiles to write, per class, after balancing.

    ``progress`` as ``enabled`` of :class:`fissure.progress.Progress` (None: a bar on a terminal only).
    """
    spec.check()
    chosen: dict[str, list[tuple[int, int, int]]] = {c: [] for c in CLASSES}
    too_small = 0
    for i, item in enumerate(iterate(items, "label tiles", len(items), unit="images", enabled=progress)):
        mask = load_mask(item.mask)
        if mask.ndim != 2:
            raise DataError(f"{item.mask}: a mask must be a single-channel image")
        if not tile_origins(*mask.shape, spec.size, spec.stride):
            too_small += 1
        for y, x, label in label_mask(mask, spec):
            chosen[label].append((i, y, x))
    if too_small == len(items):
        raise DataError(f"every image is smaller than the patch size {spec.size}; use a smaller --size")
    rng = np.random.default_rng(spec.seed)
    cap = spec.max_per_class
    if spec.balance:
        smallest = min(len(v) for v in chosen.values())
        if smallest == 0 and any(chosen.values()) and not spec.strict_balance:
            smallest = None
        elif smallest == 0 and any(chosen.values()):
            found = ", ".join(f"{len(v)} {k}" for k, v in chosen.items())
            raise DataError(f"found {found} tiles: balancing would leave none; "
                            "turn balancing off or change --size/--threshold")
        if smallest is not None:
            cap = smallest if cap is None else min(cap, smallest)
    if cap is not None:
        for label, tiles in chosen.items():
            if len(tiles) > cap:
                keep = np.sort(rng.choice(len(tiles), size=cap, replace=False))
                chosen[label] = [tiles[k] for k in keep]
    return chosen


def extract_patches(data: str | os.PathLike | list[SegmentationItem], out: str | os.PathLike,
                    spec: PatchSpec = PatchSpec(), progress: bool | None = None,
                    prefix: str = "") -> dict[str, int]:
    """Write ``OUT/crack/*.jpg`` and ``OUT/no_crack/*.jpg`` (and each crack patch's mask tile in
    ``OUT/.masks/crack/``); return the count per class.

    ``progress`` as ``enabled`` of :class:`fissure.progress.Progress` (None: a bar on a terminal
    only; True: plain lines too where stderr is not a terminal, e.g. a log).
    """
    items = segmentation_items(data) if not isinstance(data, list) else data
    chosen = select_patches(items, spec, progress)
    out = Path(out)
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    (out / MASKS / "crack").mkdir(parents=True, exist_ok=True)
    by_item: dict[int, list[tuple[int, int, str]]] = {}
    for label, tiles in chosen.items():
        for i, y, x in tiles:
            by_item.setdefault(i, []).append((y, x, label))
    s = spec.size
    for i in iterate(sorted(by_item), "write patches", len(by_item), unit="images", enabled=progress):
        item = items[i]
        img = load_image(item.image)
        mask = load_mask(item.mask)
        if (img.height, img.width) != mask.shape:
            raise DataError(f"{item.image}: image is {img.width}x{img.height} but its mask "
                            f"{item.mask.name} is {mask.shape[1]}x{mask.shape[0]}")
        for y, x, label in sorted(by_item[i]):
            patch = out / label / f"{prefix}{item.image.stem}_y{y}_x{x}.jpg"
            img.crop((x, y, x + s, y + s)).save(patch, format="JPEG", quality=spec.quality)
            if label == "crack":
                tile = np.where(mask[y : y + s, x : x + s] > 0, 255, 0).astype(np.uint8)
                Image.fromarray(tile).save(patch_mask(patch))
    counts = {c: len(chosen[c]) for c in CLASSES}
    if counts["crack"] == 0 and counts["no_crack"] == 0:
        raise DataError(f"no tile of {s}x{s} could be labelled; try a smaller --size or --threshold")
    return counts
