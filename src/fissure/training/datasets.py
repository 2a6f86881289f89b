"""Torch datasets over :mod:`fissure.data.loaders` item lists, decoded by :mod:`fissure.preprocess`.

Preprocessing is exactly the serving path (``load_image`` -> ``image_to_tensor`` with the
model's :class:`PreprocessConfig`, or for a segmenter served in native-resolution tiles the
image at its working size, :func:`fissure.models.tiling.to_pixels`); augmentation (flips, rot90,
brightness/contrast, optional blur and grain, and random crops for the segmenter) is applied afterwards, in training only. Random draws use
torch's generator, so a seeded run is reproducible (also with DataLoader workers, which
torch seeds from the loader's generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fissure.data import loaders
from fissure.errors import DataError
from fissure.models import tiling as T
from fissure.settings import settings
from fissure.training.config import CONTRAST
from fissure.preprocess import PreprocessConfig, image_to_array, load_image, load_mask, mask_to_tensor, normalize

SPLITS = ("train", "val", "test")
# Decoded pixels at the model's size stay in memory when a split fits in this budget: decoding
# and resizing the same JPEGs every epoch took a sixth of a segmenter epoch on 2 cores.
CACHE_MB = settings().data_cache_mb
# `fade`: the share of training crops (patches) with a crack whose cracks are faded, and the window (px)
# the surface around a crack is averaged over
FADE_SHARE = 0.5
FADE_WINDOW = 25
# `blur` / `noise`: the share of training images each is applied to
DEGRADE_SHARE = 0.5


class _Decoded:
    """Per-dataset memo of decoded items (tuples of arrays/tensors or one array), kept until they
    fill :data:`CACHE_MB`; later items are decoded each time (each DataLoader worker holds its own
    copy)."""

    def __init__(self, budget_mb: int = CACHE_MB):
        self.left = budget_mb * 2**20
        self.store: dict = {}

    def get(self, key, load):
        if key in self.store:
            return self.store[key]
        value = load()
        size = sum(part.nbytes for part in (value if isinstance(value, tuple) else (value,)))
        if size <= self.left:
            self.store[key] = value
            self.left -= size
        return value


def _rand() -> float:
    return float(torch.rand(()))


def augment(x: torch.Tensor, y: torch.Tensor | None, cfg: PreprocessConfig, contrast: tuple[float, float] = CONTRAST,
            *, blur: float = 0.0, noise: float = 0.0):
    """Random flips, rot90 (square inputs) and brightness/contrast jitter of a normalised image;
    the contrast factor is drawn from ``contrast`` (low, high). ``blur`` (px) and ``noise`` (grey
    levels, 0-255): the largest Gaussian blur sigma and grain standard deviation, each drawn
    uniformly for a share :data:`DEGRADE_SHARE` of images (0: off)."""
    if _rand() < 0.5:
        x, y = x.flip(-1), (y.flip(-1) if y is not None else None)
    if _rand() < 0.5:
        x, y = x.flip(-2), (y.flip(-2) if y is not None else None)
    if x.shape[-1] == x.shape[-2]:
        k = int(torch.randint(0, 4, ()))
        if k:
            x, y = torch.rot90(x, k, (-2, -1)), (torch.rot90(y, k, (-2, -1)) if y is not None else None)
    jitter = _rand() < 0.8
    sigma = blur * _rand() if blur > 0 and _rand() < DEGRADE_SHARE else 0.0
    grain = noise / 255.0 * _rand() if noise > 0 and _rand() < DEGRADE_SHARE else 0.0
    if jitter or sigma or grain:
        mean = torch.tensor(cfg.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(cfg.std, dtype=x.dtype).view(3, 1, 1)
        raw = x * std + mean
        if jitter:
            factor = contrast[0] + (contrast[1] - contrast[0]) * _rand()
            brightness = 0.2 * (_rand() - 0.5)
            centre = raw.mean()
            raw = ((raw - centre) * factor + centre + brightness).clamp(0.0, 1.0)
        if sigma:
            raw = gaussian_blur(raw, sigma)
        if grain:
            # one value per pixel for all channels: a surface's grain and a sensor's luminance noise
            raw = (raw + grain * torch.randn((1, *raw.shape[-2:]), dtype=raw.dtype)).clamp(0.0, 1.0)
        x = (raw - mean) / std
    return x.contiguous(), (y.contiguous() if y is not None else None)


def gaussian_blur(raw: torch.Tensor, sigma: float) -> torch.Tensor:
    """[C,H,W] blurred by a separable Gaussian of ``sigma`` px (kernel to 2 sigma; edges replicated)."""
    radius = max(1, int(np.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=raw.dtype)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
    k = k / k.sum()
    c = raw.shape[0]
    out = torch.nn.functional.pad(raw[None], (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


class SegmentationDataset(Dataset):
    """(image [3,S,S], mask [1,S,S]) at the model's size; ``crop`` takes a random crop;
    ``hard_negatives`` is the share of training crops that get a joint or sealant band drawn in
    (:func:`fissure.data.synth.add_hard_negative`), ``extra_cracks`` the share that get one more
    crack, often a wide one (:func:`fissure.data.synth.add_crack`).

    ``tiling`` in tile mode (a model served at native resolution): each image at its working
    size (its own, within ``tiling.max_pixels``), so crops show cracks as wide as the served
    tiles do; items are then [3,H,W] / [1,H,W] without ``crop``, and images smaller than the crop
    are padded (edge pixels, background mask)."""

    def __init__(self, items, cfg: PreprocessConfig, *, crop: int = 0, augment: bool = False, crack_bias: float = 0.7,
                 hard_negatives: float = 0.0, extra_cracks: float = 0.0, contrast: tuple[float, float] = CONTRAST,
                 scale: tuple[float, float] = (1.0, 1.0), fade: tuple[float, float] = (1.0, 1.0),
                 blur: float = 0.0, noise: float = 0.0, tiling: T.TilingConfig | None = None):
        self.items = list(items)
        self.cfg = cfg
        self.contrast = tuple(contrast)
        self.degrade = {"blur": blur, "noise": noise}
        self.scale = tuple(scale) if augment else (1.0, 1.0)
        self.fade = tuple(fade) if augment else (1.0, 1.0)
        self.crop = crop
        self.crack_bias = crack_bias
        self.augment = augment
        self.hard_negatives = hard_negatives if augment else 0.0
        self.extra_cracks = extra_cracks if augment else 0.0
        self.native = tiling if tiling is not None and tiling.tiles else None
        self._decoded = _Decoded()

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> tuple[np.ndarray, torch.Tensor]:
        item = self.items[i]
        img, mask = load_image(item.image), load_mask(item.mask)
        if self.native is None:
            return image_to_array(img, self.cfg), mask_to_tensor(mask, self.cfg.size)
        pixels = T.model_pixels(img, self.cfg, self.native)
        return pixels, mask_to_tensor(mask, pixels.shape[:2])

    def __getitem__(self, i: int):
        # the cached arrays are never written to: cropping slices, drawing and normalising copy
        pixels, y = self._decoded.get(i, lambda: self._load(i))
        if self.crop and (self.native is not None or self.crop < self.cfg.size or self.scale != (1.0, 1.0)):
            side = self._window()
            pixels, y = _pad_to(pixels, y, side)
            top, left = self._crop_origin(y, side)
            pixels = pixels[top : top + side, left : left + side]
            y = y[:, top : top + side, left : left + side]
            if side != self.crop:
                pixels, y = _resize(pixels, y, self.crop)
        pixels = _maybe_fade(pixels, y, self.fade)
        if self.hard_negatives or self.extra_cracks:
            pixels, y = self._draw(np.ascontiguousarray(pixels), y)
        x = normalize(torch.from_numpy(np.ascontiguousarray(pixels))[None], self.cfg)[0].contiguous()
        if self.augment:
            x, y = augment(x, y, self.cfg, self.contrast, **self.degrade)
        return x, y

    def _draw(self, pixels: np.ndarray, y: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Draw synthetic cracks and hard negatives into a training crop (numpy draws seeded
        from torch's generator, so a seeded run stays reproducible)."""
        from fissure.data.synth import add_crack, add_hard_negative

        soft = y[0].numpy()
        mask = before = soft > 0.5
        rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
        if rng.random() < self.extra_cracks:
            pixels, mask = add_crack(rng, pixels, mask)
        if rng.random() < self.hard_negatives:
            pixels, mask = add_hard_negative(rng, pixels, mask)
        # pixels the drawing left alone keep their (possibly fractional, after `scale`) value
        return pixels, torch.from_numpy(np.where(mask == before, soft, mask).astype(np.float32))[None]

    def _window(self) -> int:
        """Side of the window a crop is cut from: the crop, or crop x s for s drawn from ``scale``
        (a multiple of 8, at least 16 px)."""
        low, high = self.scale
        if (low, high) == (1.0, 1.0):
            return self.crop
        s = low + (high - low) * _rand()
        return max(16, int(round(self.crop * s / 8)) * 8)

    def _crop_origin(self, y: torch.Tensor, side: int) -> tuple[int, int]:
        """Random corner of a ``side`` window; with probability ``crack_bias`` it holds a random
        crack pixel (thin cracks cover ~1% of pixels, so uniform crops would mostly show background)."""
        span_h, span_w = y.shape[-2] - side, y.shape[-1] - side
        if _rand() < self.crack_bias:
            hits = torch.nonzero(y[0] > 0.5)
            if len(hits):
                cy, cx = hits[int(torch.randint(0, len(hits), ()))].tolist()
                top = cy - int(torch.randint(0, side, ()))
                left = cx - int(torch.randint(0, side, ()))
                return min(max(top, 0), span_h), min(max(left, 0), span_w)
        return int(torch.randint(0, span_h + 1, ())), int(torch.randint(0, span_w + 1, ()))


def _maybe_fade(pixels: np.ndarray, y: torch.Tensor, fade: tuple[float, float]) -> np.ndarray:
    """With ``fade`` on, half the images with a crack show it faded (:func:`fade_cracks`); no random
    draw is made for an image without one, so such runs draw as they did before."""
    if fade == (1.0, 1.0) or not bool((y > 0).any()) or _rand() >= FADE_SHARE:
        return pixels
    low, high = fade
    return fade_cracks(pixels, y, low + (high - low) * _rand())


def fade_cracks(pixels: np.ndarray, y: torch.Tensor, keep: float) -> np.ndarray:
    """Fade the cracks of an image [H, W, 3] (uint8) toward the surface around them, keeping
    ``keep`` of their depth and their texture: each crack pixel (mask [1, H, W], unchanged: the
    crack is still there, fainter) is lifted by (1 - keep) x (surface - the crack's local mean).

    The surface is each pixel's mean over a window of the pixels that are neither crack nor within
    2 px of one (a crack's dark rim is often left out of its mask); where a wide crack leaves none
    in reach, the mean of the whole image's surface pixels."""
    F = torch.nn.functional
    img = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]  # a copy: cached arrays are read-only
    near = F.max_pool2d((y > 0).float()[None], 5, stride=1, padding=2)
    free = 1.0 - near
    k = FADE_WINDOW
    weight = F.avg_pool2d(free, k, stride=1, padding=k // 2, count_include_pad=False)
    surface = F.avg_pool2d(img * free, k, stride=1, padding=k // 2, count_include_pad=False) / weight.clamp_min(1e-6)
    if float(free.sum()):
        overall = (img * free).sum((2, 3), keepdim=True) / free.sum()
    else:
        overall = img.mean((2, 3), keepdim=True)
    surface = torch.where(weight > 0.02, surface, overall)
    # the crack's local mean (5 px, its own pixels) is lifted toward the surface; its texture stays
    core = y[None].float()
    cover = F.avg_pool2d(core, 5, stride=1, padding=2, count_include_pad=False)
    crack = F.avg_pool2d(img * core, 5, stride=1, padding=2, count_include_pad=False) / cover.clamp_min(1e-6)
    out = img + (1.0 - keep) * core * (surface - crack)
    return out[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _resize(pixels: np.ndarray, y: torch.Tensor, side: int) -> tuple[np.ndarray, torch.Tensor]:
    """A window [h, w, 3] and its mask [1, h, w] resized to ``side`` x ``side``: the image
    bilinear (antialiased when shrinking), the mask by area, each pixel the share of it that is
    crack (a soft target: a thin crack shrunk stays in the mask as faint as it is in the image,
    and no rounding makes cracks wider or thinner on average)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    pixels = x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    cover = torch.nn.functional.interpolate(y[None], size=(side, side), mode="area")[0]
    return pixels, cover.clamp_(0.0, 1.0)


def _pad_to(pixels: np.ndarray, y: torch.Tensor, side: int) -> tuple[np.ndarray, torch.Tensor]:
    """Pad an image [H, W, 3] (edge pixels) and its mask [1, H, W] (background) to at least
    ``side`` x ``side``; unchanged when already that large."""
    dh, dw = max(0, side - pixels.shape[0]), max(0, side - pixels.shape[1])
    if not dh and not dw:
        return pixels, y
    pixels = np.pad(pixels, ((0, dh), (0, dw), (0, 0)), mode="edge")
    return pixels, torch.nn.functional.pad(y, (0, dw, 0, dh))


class ClassificationDataset(Dataset):
    """(image [3,S,S], label) for ``(path, class_index)`` items. ``fade`` (training): half the
    images with a mask tile (crack patches cut by ``fissure data prepare``,
    :data:`fissure.data.loaders.PATCH_MASKS`) show their crack faded as :class:`SegmentationDataset` does."""

    def __init__(self, items, cfg: PreprocessConfig, *, augment: bool = False, contrast: tuple[float, float] = CONTRAST,
                 fade: tuple[float, float] = (1.0, 1.0), blur: float = 0.0, noise: float = 0.0):
        self.items = list(items)
        self.cfg = cfg
        self.augment = augment
        self.contrast = tuple(contrast)
        self.degrade = {"blur": blur, "noise": noise}
        self.fade = tuple(fade) if augment else (1.0, 1.0)
        self._decoded = _Decoded()

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, path: Path):
        pixels = image_to_array(load_image(path), self.cfg)
        tile = loaders.patch_mask(path)
        if self.fade == (1.0, 1.0) or not tile.is_file():
            return pixels
        return pixels, mask_to_tensor(load_mask(tile), self.cfg.size)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        pixels = self._decoded.get(i, lambda: self._load(Path(path)))
        if isinstance(pixels, tuple):
            pixels, y = pixels
            pixels = _maybe_fade(pixels, y, self.fade)
        x = normalize(torch.from_numpy(np.ascontiguousarray(pixels))[None], self.cfg)[0].contiguous()
        if self.augment:
            x, _ = augment(x, None, self.cfg, self.contrast, **self.degrade)
        return x, label


@dataclass
class Splits:
    """Item lists per split; ``classes`` for classification: the class folders' names, the
    negative one first (index 1 = crack when binary; N classes from a defect set's folders)."""

    task: str
    train: list
    val: list
    test: list
    classes: list[str]
    roots: dict  # split -> folder (or the single folder it was drawn from)

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _items(task: str, root: Path, classes=None):
    if task == "segment":
        return loaders.segmentation_items(root), ["background", "crack"]
    # <class>/ folders, or images/<class>/ (the shared magnetic-tile layout, masks/ beside)
    cset = loaders.classification_set(loaders.class_root(root) or root, classes)
    return cset.items, cset.classes


def _seeded_split(items: list, val_fraction: float, test_fraction: float, seed: int, key=None):
    """Deterministic split of a sorted list: same files + same seed -> same split."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item) if key else 0, []).append(item)
    train, val, test = [], [], []
    for k in sorted(groups):
        group = groups[k]
        perm = torch.randperm(len(group), generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = int(round(len(group) * test_fraction))
        n_val = int(round(len(group) * val_fraction))
        if len(group) >= 3:
            n_val, n_test = max(n_val, 1 if val_fraction > 0 else 0), max(n_test, 1 if test_fraction > 0 else 0)
        shuffled = [group[i] for i in perm]
        test += shuffled[:n_test]
        val += shuffled[n_test : n_test + n_val]
        train += shuffled[n_test + n_val :]
    return train, val, test


def find_splits(task: str, root: str | Path, *, val_fraction=0.15, test_fraction=0.15, seed=0, classes=None) -> Splits:
    """``root/{train,val,test}`` when ``root/train`` exists, else a seeded split of ``root``.

    A missing ``val/`` is split off ``train/`` (and a missing ``test/`` leaves the test set empty).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    key = (lambda it: it[1]) if task == "classify" else None
    if (root / "train").is_dir():
        train, classes = _items(task, root / "train", classes)
        roots = {"train": str(root / "train")}
        if (root / "val").is_dir():
            val, _ = _items(task, root / "val", classes)
            roots["val"] = str(root / "val")
        else:
            train, val, _ = _seeded_split(train, val_fraction, 0.0, seed, key)
            roots["val"] = str(root / "train")
        test = []
        if (root / "test").is_dir():
            test, _ = _items(task, root / "test", classes)
            roots["test"] = str(root / "test")
    else:
        if task == "segment" and not (root / "images").is_dir():
            raise DataError(f"{root}: expected train/ val/ test/ subfolders or images/ + masks/ folders")
        items, classes = _items(task, root, classes)
        train, val, test = _seeded_split(items, val_fraction, test_fraction, seed, key)
        roots = {s: str(root) for s in SPLITS}
    if not train:
        raise DataError(f"{root}: the training split is empty")
    if not val:
        raise DataError(f"{root}: the validation split is empty (add a val/ folder or more images)")
    return Splits(task=task, train=train, val=val, test=test, classes=list(classes), roots=roots)


def eval_items(task: str, root: str | Path, classes=None):
    """Items of one evaluation folder (any layout loaders accept); a folder of split folders (as
    `fissure data import` writes them) is refused with the split to name instead."""
    root = Path(root)
    subs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    if subs and all(n.lower() in loaders.SPLIT_NAMES for n in subs):
        pick = next((n for n in subs if n.lower() == "test"), sorted(subs)[0])
        raise DataError(f"{root}: holds the splits {', '.join(sorted(subs))}, not one dataset: "
                        f"evaluate one of them, e.g. --data {root / pick}")
    return _items(task, root, classes)
