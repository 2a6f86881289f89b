"""Slices of an evaluation set: where a model fails, not only how well it does on average.

Every image of a segmentation set falls into slices, each scored like the whole set (strict and
2-px-tolerant crack-pixel scores, plus the share of crack-free images with a false alarm):

- ``crack`` / ``no_crack``: whether its truth mask holds any crack pixel;
- ``hard_negative`` and ``hard_negative:<kind>``: a synthetic image (``synth-<seed>-<index>``, as
  ``fissure data prepare`` and ``fissure data synth`` name them) with a drawn joint, painted line,
  stain, shadow, scratches, leaves or tar band (:mod:`fissure.data.synth`). The kinds are not
  stored beside the image: the image is drawn again from its seed and index, and tagged only when
  the drawing is byte-identical to the file;
- ``width:thin`` / ``width:wide``: the median width of its true cracks (:func:`crack_width`) is at
  most :data:`THIN_MAX_PX` px, or more, at the mask's native resolution;
- ``size:...``: the longest side of the image (:data:`SIZE_BUCKETS`).

A classifier's items fall into ``class:<name>`` (each class with items in the set: its precision,
recall, F1), ``size:...`` (the item's own longest side) and, for a crack / no_crack classifier,
``hard_negative`` and ``hard_negative:<kind>``: crack-free items of a synthetic image with a drawn
hard negative (a whole image from ``fissure data synth --task classify``, or a ``no_crack`` patch
that ``fissure data prepare`` cut from one: the kinds are the whole image's, so such a patch may
show only part of the joint or band, or none of it). Their ``false_alarm_rate`` is the share taken
for a crack, as it is for the crack-free class (``class:no_crack``) and every slice holding
crack-free items. An N-class defect classifier with one negative class (:func:`negative_class`:
``free``, ``no_crack``, ``good`` ...) counts the same false alarms: its negative items taken for
any defect class.

Per dataset (a report's ``datasets`` with ``datasets_by: source``): the source an image came
from. ``fissure data prepare`` prefixes every file with its source (``synth-``, ``feedback-``, or
the tag of a real folder, listed in the prepared ``manifest.json``); a folder without a manifest
is one source named after the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from fissure.data.loaders import NEGATIVE_NAMES, source_tag
from fissure.training import metrics as M

THIN_MAX_PX = 3.0  # median crack width (px) of a "thin" image; above it "wide"
SIZE_BUCKETS = ((512, "size:<=512px"), (1024, "size:513-1024px"), (2048, "size:1025-2048px"),
                (None, "size:>2048px"))
DEFINITIONS = {
    "crack": "images whose truth mask has crack pixels",
    "no_crack": "images whose truth mask is empty: every predicted pixel is a false alarm",
    "hard_negative": "synthetic images with a drawn joint, paint line, stain, shadow, scratches, leaves or tar band",
    "hard_negative:<kind>": "synthetic images with that kind of hard negative drawn in",
    "width:thin": f"median true crack width <= {THIN_MAX_PX:g} px (medial axis, native resolution)",
    "width:wide": f"median true crack width > {THIN_MAX_PX:g} px",
    "size:<bucket>": "longest image side in px",
}
_SYNTH_ID = re.compile(r"^synth-(\d+)-(\d+)$")
_PATCH = re.compile(r"^(.+)_y\d+_x\d+$")  # fissure.data.patches names a tile <image stem>_y<Y>_x<X>


def crack_width(mask) -> float | None:
    """Median width (px) of the cracks in a truth mask, None when it has none.

    Measured on the medial ridge of the mask (pixels whose distance to the background is a local
    maximum): there a crack of width w has distance (w + 1) / 2, so a 1-px line measures 1 and a
    5-px band 5 (an even width reads one less)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    # the cracks' bounding box with a background rim: the same distances, far less work on a photo
    mask = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    dist = ndimage.distance_transform_edt(mask)
    ridge = mask & (dist >= ndimage.maximum_filter(dist, size=3))
    return float(np.median(2.0 * dist[ridge] - 1.0))


def size_bucket(height: int, width: int) -> str:
    side = max(int(height), int(width))
    for limit, name in SIZE_BUCKETS:
        if limit is None or side <= limit:
            return name
    return SIZE_BUCKETS[-1][1]  # pragma: no cover


def find_manifest(folder: str | Path, levels: int = 3) -> dict | None:
    """The prepared data's ``manifest.json`` in ``folder`` or up to ``levels`` folders above it."""
    here = Path(folder).resolve()
    for candidate in [here, *here.parents][: levels + 1]:
        path = candidate / "manifest.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) and "sources" in data else None
    return None


class SourceIndex:
    """Which source (dataset) each file of an evaluation folder came from."""

    def __init__(self, folder: str | Path, manifest: dict | None = None):
        self.folder = Path(folder)
        self.manifest = manifest if manifest is not None else find_manifest(folder)
        self.tags: list[str] = []
        if self.manifest:
            self.tags = sorted(self._real_tags(self.manifest), key=len, reverse=True)
        parts = [p for p in self.folder.resolve().parts if p not in ("/", "")]
        self.default = "/".join(parts[-2:]) or "data"

    @staticmethod
    def _real_tags(manifest: dict) -> list[str]:
        """The file-name prefixes of the manifest's real folders: their ``tag`` where the manifest
        records it, else the tag prepare derives from the folder (in the order prepare did)."""
        taken: set[str] = set()
        tags = []
        for src in manifest.get("sources") or []:
            if not isinstance(src, dict) or src.get("kind") == "synth" or src.get("source") == "synth":
                continue
            tag = src.get("tag") or source_tag(str(src.get("source", "")), taken)
            taken.add(tag)
            tags.append(tag)
        return tags

    def source_of(self, path: str | Path) -> str:
        stem = Path(path).stem
        if stem.startswith("synth-"):
            return "synth"
        if stem.startswith("feedback-"):
            return "feedback"
        for tag in self.tags:
            if stem.startswith(tag + "-"):
                return tag
        return self.default


def synth_negatives(path: str | Path, image_size: tuple[int, int]) -> list[str] | None:
    """The hard-negative kinds drawn into a synthetic image, None when it is not one or when
    drawing it again from its seed and index does not give the very same file."""
    from fissure.data import synth

    path = Path(path)
    match = _SYNTH_ID.match(path.stem)
    height, width = image_size
    if not match or height != width or path.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    seed, index = int(match.group(1)), int(match.group(2))
    try:
        data = path.read_bytes()
    except OSError:
        return None
    candidates = (lambda: synth.render(synth.image_rng(seed, index), height),  # fissure data prepare
                  lambda: synth.render_for_task(seed, index, "segment", height)[0],  # fissure data synth
                  lambda: synth.render_for_task(seed, index, "classify", height)[0])
    for draw in candidates:
        try:
            sample = draw()
        except Exception:  # noqa: BLE001 - a renderer that changed: the slice is unknown, not an error
            continue
        if sample.jpeg_bytes() == data:
            return list(sample.negatives)
    return None


def patch_origin(path: str | Path) -> Path | None:
    """The prepared image a classification patch was cut from: ``fissure data prepare`` writes
    OUT/classify/<split>/<class>/<id>_y<Y>_x<X>.jpg from OUT/segment/<split>/images/<id>.jpg."""
    path = Path(path)
    match = _PATCH.match(path.stem)
    if not match:
        return None
    split = path.parent.parent
    image = split.parent.parent / "segment" / split.name / "images" / f"{match.group(1)}.jpg"
    return image if image.is_file() else None


def classify_negatives(path: str | Path, cache: dict | None = None) -> list[str] | None:
    """The hard-negative kinds of a classification item: a synthetic image's own, or those of the
    prepared synthetic image a patch was cut from (``cache``: by image, one drawing per image)."""
    from PIL import Image

    image = patch_origin(path) or Path(path)
    if not _SYNTH_ID.match(image.stem):
        return None  # a real image: nothing to draw again
    cache = {} if cache is None else cache
    if image not in cache:
        try:
            with Image.open(image) as im:
                size = (im.height, im.width)
        except OSError:
            size = (0, 1)  # unreadable: not a synthetic image, synth_negatives says None
        cache[image] = synth_negatives(image, size)
    return cache[image]


@dataclass
class ImageScore:
    """One image's scores and the slices it falls into."""

    name: str
    source: str
    slices: list[str]
    height: int
    width: int
    crack_width: float | None
    tp: int
    fp: int
    fn: int
    relaxed: M.RelaxedCounts

    @property
    def dice(self) -> float:
        return M.segmentation_metrics_from_counts(self.tp, self.fp, self.fn)["dice"]

    @property
    def relaxed_f1(self) -> float:
        return self.relaxed.metrics()["relaxed_f1"]

    def row(self) -> dict:
        return {"image": self.name, "source": self.source, "height": self.height, "width": self.width,
                "crack_width_px": None if self.crack_width is None else round(self.crack_width, 2),
                "truth_px": self.tp + self.fn, "predicted_px": self.tp + self.fp, "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "dice": round(self.dice, 6), "relaxed_f1": round(self.relaxed_f1, 6),
                "slices": " ".join(self.slices)}


def score_image(name: str, source: str, pred: np.ndarray, truth: np.ndarray, *,
                negatives: list[str] | None = None) -> ImageScore:
    """Score a boolean prediction against its truth mask and name the image's slices."""
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    relaxed = M.RelaxedCounts()
    relaxed.update(pred, truth)
    width = crack_width(truth)
    slices = ["crack" if width is not None else "no_crack"]
    if negatives:
        slices += ["hard_negative", *(f"hard_negative:{k}" for k in sorted(set(negatives)))]
    if width is not None:
        slices.append("width:thin" if width <= THIN_MAX_PX else "width:wide")
    slices.append(size_bucket(*truth.shape))
    return ImageScore(name=name, source=source, slices=slices, height=int(truth.shape[0]), width=int(truth.shape[1]),
                      crack_width=width, tp=int(np.count_nonzero(pred & truth)), fp=int(np.count_nonzero(pred & ~truth)),
                      fn=int(np.count_nonzero(~pred & truth)), relaxed=relaxed)


@dataclass
class SliceStats:
    """Summed counts of the images in one slice."""

    n_images: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    dice_sum: float = 0.0
    crack_free: int = 0
    false_alarms: int = 0
    relaxed: M.RelaxedCounts = field(default_factory=M.RelaxedCounts)

    def add(self, s: ImageScore) -> None:
        self.n_images += 1
        self.tp, self.fp, self.fn = self.tp + s.tp, self.fp + s.fp, self.fn + s.fn
        self.dice_sum += s.dice
        if s.tp + s.fn == 0:
            self.crack_free += 1
            self.false_alarms += int(s.fp > 0)
        self.relaxed.merge(s.relaxed)

    def metrics(self) -> dict:
        out = {"n_images": self.n_images, **M.segmentation_metrics_from_counts(self.tp, self.fp, self.fn),
               **self.relaxed.metrics(), "mean_image_dice": self.dice_sum / max(self.n_images, 1),
               "truth_px": self.tp + self.fn, "crack_free_images": self.crack_free}
        if self.crack_free:
            out["false_alarm_images"] = self.false_alarms
            out["false_alarm_rate"] = self.false_alarms / self.crack_free
        return out


def _ordered(names):
    order = {"crack": 0, "no_crack": 1, "hard_negative": 2, "width:thin": 4, "width:wide": 5}

    def key(n):
        if n.startswith("hard_negative:"):
            return (3, n)
        if n.startswith("size:"):
            limits = [i for i, (_, b) in enumerate(SIZE_BUCKETS) if b == n]
            return (6, f"{limits[0] if limits else 9}")
        return (order.get(n, 7), n)

    return sorted(names, key=key)


def segment_slices(scores: list[ImageScore]) -> tuple[dict, dict]:
    """(slices, sources): metrics per slice and per source of the scored images."""
    slices: dict[str, SliceStats] = {}
    sources: dict[str, SliceStats] = {}
    for s in scores:
        for name in s.slices:
            slices.setdefault(name, SliceStats()).add(s)
        sources.setdefault(s.source, SliceStats()).add(s)
    return ({k: slices[k].metrics() for k in _ordered(slices)},
            {k: sources[k].metrics() for k in sorted(sources)})


def weakest_slice(slices: dict, min_images: int = 2, metric: str = "dice") -> dict | None:
    """The slice with cracks of the lowest ``metric`` (segment: Dice; classify: recall), or (when
    that is better) the crack-free slice with the highest false-alarm rate, among slices of at
    least ``min_images`` images."""
    worst = None
    for name, m in slices.items():
        if (m.get("n_images") or 0) < min_images:
            continue
        # a segmenter's slice has cracks when it has crack pixels; a classifier's holds its metric
        # only when it holds items it applies to (a crack-free slice has no crack recall)
        has_cracks = m.get("truth_px") if "truth_px" in m else m.get(metric) is not None
        if has_cracks:
            cand = {"slice": name, "metric": metric, "value": m[metric], "badness": 1.0 - m[metric]}
        elif m.get("false_alarm_rate") is not None:
            cand = {"slice": name, "metric": "false_alarm_rate", "value": m["false_alarm_rate"],
                    "badness": m["false_alarm_rate"]}
        else:
            continue
        cand["n"] = m["n_images"]
        # at equal scores the narrower slice says more (a size bucket of every image says nothing)
        if worst is None or (cand["badness"], -cand["n"]) > (worst["badness"], -worst["n"]):
            worst = cand
    if worst is not None:
        worst.pop("badness")
        worst.pop("n")
    return worst


def negative_class(classes: list[str]) -> int | None:
    """The index of the crack-free (defect-free) class: a binary classifier's first class (the
    negative one, as the data loaders order them); for N classes the one class named as a negative
    (:data:`fissure.data.loaders.NEGATIVE_NAMES`: ``free``, ``no_crack``, ``good`` ...), None when
    there is not exactly one."""
    if len(classes) == 2:
        return 0
    found = [i for i, c in enumerate(classes) if str(c).lower() in NEGATIVE_NAMES]
    return found[0] if len(found) == 1 else None


def classify_scores(y_true, probs, negative: int | None = None) -> dict:
    """One classifier slice: ``n_images`` and the named metrics (for two classes only where it holds
    crack items: a crack-free slice has no crack precision or recall), plus its crack-free items
    taken for a crack (``crack_free_images`` / ``false_alarm_images`` / ``false_alarm_rate``).
    ``negative``: the crack-free class's index, for two classes always the first; for N classes
    (:func:`negative_class`) its items taken for any other class are the false alarms, and None
    (no negative class) counts none."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    binary = probs.shape[1] == 2
    negative = 0 if binary else negative
    out: dict = {"n_images": len(y_true)}
    if not binary or (y_true == 1).any():
        out.update(M.classification_metrics(y_true, probs))
    else:
        out["accuracy"] = float((probs.argmax(axis=1) == y_true).mean()) if len(y_true) else 0.0
    free = y_true == negative if negative is not None else np.zeros(len(y_true), bool)
    if free.any():
        alarms = int((probs[free].argmax(axis=1) != negative).sum())
        out.update(crack_free_images=int(free.sum()), false_alarm_images=alarms,
                   false_alarm_rate=alarms / int(free.sum()))
    return out


def classify_slices(y_true, probs, classes: list[str], sizes: list[tuple[int, int]],
                    negatives: list[list[str] | None]) -> dict:
    """A classifier's slices: ``class:<name>`` (that class's precision, recall, F1; only classes
    with items here: a class with none has no recall to report), the hard negatives
    (:func:`classify_negatives` of each crack-free item) and ``size:...``. The crack-free class
    (:func:`negative_class`) and every other slice holding its items also count its false alarms."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    negative = negative_class(classes)
    per_class = M.per_class_metrics(y_true, probs.argmax(axis=1), classes)
    out = {f"class:{c}": {"n_images": m["support"], **{k: v for k, v in m.items() if k != "support"}}
           for c, m in per_class.items() if m["support"]}
    if negative is not None and (y_true == negative).any():  # the crack-free class's false alarms, as any crack-free slice's
        free = classify_scores(y_true[y_true == negative], probs[y_true == negative], negative)
        out[f"class:{classes[negative]}"].update(
            {k: free[k] for k in ("crack_free_images", "false_alarm_images", "false_alarm_rate")})
    groups: dict[str, list[int]] = {}
    for i, (size, kinds) in enumerate(zip(sizes, negatives)):
        if kinds:
            for name in ["hard_negative", *(f"hard_negative:{k}" for k in sorted(set(kinds)))]:
                groups.setdefault(name, []).append(i)
        groups.setdefault(size_bucket(*size), []).append(i)
    for name in _ordered(groups):
        idx = np.asarray(groups[name])
        out[name] = classify_scores(y_true[idx], probs[idx], negative)
    return out


def classify_sources(sources: list[str], y_true, probs, negative: int | None = None) -> dict:
    """:func:`classify_scores` per source of each item (patch names keep their image's prefix);
    ``negative`` as there."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    groups: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        groups.setdefault(src, []).append(i)
    return {src: classify_scores(y_true[groups[src]], probs[groups[src]], negative) for src in sorted(groups)}


def thumbnail(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, max_side: int = 512):
    """The gallery's copy of (rgb, truth, pred), at most ``max_side`` px: masks are area-resized
    and keep pixels at least a quarter covered, so a thin crack stays visible."""
    from PIL import Image

    h, w = truth.shape
    if max(h, w) <= max_side:
        return np.asarray(image), truth, pred
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))

    def small(mask):
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(size, Image.BOX)) >= 64

    rgb = Image.fromarray(np.asarray(image)).resize(size, Image.BILINEAR)
    return np.asarray(rgb), small(truth), small(pred)

