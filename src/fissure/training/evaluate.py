"""Evaluate a model on a folder: the metrics JSON of ``fissure evaluate`` and its plots.

Images of any size are accepted. Inputs go through the model's own preprocessing (resize to
the spec's size); segmentation probabilities are resized back to each mask's native size, so
the pixel metrics are those of the original resolution. With native-resolution tiling (the
spec's ``tiling.mode: tile``, or ``native=True``) a segmenter sees each image at its own size in
overlapping tiles, through the same code as serving (:mod:`fissure.models.tiling`).

Beyond the set's scores, :meth:`EvalResult.quality` says where the model fails: metrics per
slice and per source (:mod:`fissure.training.slices`), a threshold sweep, and the worst
predictions (segmenter: lowest per-image Dice; classifier: the most confident mistakes), which
:meth:`EvalResult.write_plots` draws as a gallery. Several folders are evaluated one by one and
:meth:`EvalResult.combine` makes their whole (``fissure evaluate --data A --data B``).
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fissure import MODEL_NAMES
from fissure.data.loaders import source_tag
from fissure.errors import FissureError, UsageError
from fissure.models import preprocess_config
from fissure.models import tiling as T
from fissure.models import tta
from fissure.models.masks import crack_mask, mask_params
from fissure.preprocess import image_to_tensor, load_image, load_mask
from fissure.progress import Progress
from fissure.training import metrics as M
from fissure.training import plots
from fissure.training import slices as S
from fissure.training.datasets import eval_items


def _empty_gallery(out: Path, prefix: str) -> Path:
    """``out/<prefix>worst``, without the PNGs of an earlier run (a gallery is rewritten whole)."""
    folder = out / f"{prefix}worst"
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    return folder


@dataclass
class EvalResult:
    task: str
    metrics: dict
    n_images: int
    classes: list[str]
    y_true: np.ndarray | None = None
    probs: np.ndarray | None = None
    counts: M.PixelCounts | None = None
    samples: list = field(default_factory=list)
    threshold: float = 0.5
    threshold_low: float | None = None  # segment: the hysteresis low threshold the masks used
    scores: list = field(default_factory=list)  # segment: ImageScore per image
    worst: list = field(default_factory=list)  # segment: (ImageScore, rgb, truth, pred), worst first
    paths: list = field(default_factory=list)  # classify: each image's path
    sources: dict = field(default_factory=dict)  # classify: path folder -> SourceIndex
    sizes: list = field(default_factory=list)  # classify: each image's (height, width)
    negatives: list = field(default_factory=list)  # classify: hard-negative kinds of each crack-free synthetic item
    datasets: list = field(default_factory=list)  # each item's --data name (combine); empty for one folder
    parts: dict = field(default_factory=dict)  # combine: each --data name's (folder, EvalResult)
    n_worst: int = 8

    @classmethod
    def combine(cls, results: dict[str, "EvalResult"], folders: dict | None = None) -> "EvalResult":
        """One result for the sets of several folders (by name; ``folders``: each one's path): the
        scores of all their items together, each item tagged with its set's name (``datasets``),
        each set kept for its own entry in :meth:`quality`."""
        parts = list(results.values())
        first = parts[0]
        tags = [name for name, r in results.items() for _ in range(r.n_images)]
        common = dict(task=first.task, n_images=len(tags), classes=first.classes, threshold=first.threshold,
                      threshold_low=first.threshold_low, n_worst=first.n_worst, datasets=tags,
                      parts={name: (str((folders or {}).get(name, name)), r) for name, r in results.items()})
        if first.task == "classify":
            y_true, probs = np.concatenate([r.y_true for r in parts]), np.concatenate([r.probs for r in parts])
            return cls(metrics=M.classification_metrics(y_true, probs), y_true=y_true, probs=probs,
                       paths=[p for r in parts for p in r.paths], sources={k: v for r in parts for k, v in r.sources.items()},
                       sizes=[z for r in parts for z in r.sizes], negatives=[n for r in parts for n in r.negatives],
                       **common)
        counts = M.PixelCounts(threshold=first.threshold, low=first.threshold_low)
        for r in parts:
            counts.merge(r.counts)
        scores = [s for r in parts for s in r.scores]
        worst = sorted((w for r in parts for w in r.worst), key=lambda w: (w[0].dice, -(w[0].fp + w[0].fn)))
        samples = [x for r in parts for x in r.samples]
        keep = max(len(r.samples) for r in parts)  # as many overlays as one set draws, spread over all
        pick = sorted(set(np.linspace(0, len(samples) - 1, min(keep, len(samples))).round().astype(int).tolist())) if samples else []
        return cls(metrics=_segment_metrics(counts, scores), counts=counts, scores=scores,
                   worst=worst[: first.n_worst], samples=[samples[i] for i in pick], **common)

    def class_scores(self) -> tuple[dict[str, dict], np.ndarray]:
        """A classifier's per-class precision/recall/F1/support by class name and its confusion
        counts ``cm[actual, predicted]``."""
        pred = self.probs.argmax(axis=1)
        return (M.per_class_metrics(self.y_true, pred, self.classes),
                M.confusion_matrix(self.y_true, pred, len(self.classes)))

    def quality(self, parts: dict[str, dict] | None = None) -> dict:
        """``slices`` (:mod:`fissure.training.slices`), ``datasets_by`` and ``datasets`` (per
        folder after :meth:`combine`, else per source of the items: :meth:`by_dataset`),
        ``threshold_sweep`` (the model's threshold and the best one), ``worst`` (the worst
        predictions, each with its ``dataset`` after :meth:`combine`), ``weakest_slice`` and, for
        the segmenter, ``slice_definitions``: JSON-ready. ``fissure evaluate``'s JSON, each
        ``quality.json`` and a training run's ``plots/test_quality.json`` all say it so.

        ``parts``: after :meth:`combine`, each set's own :meth:`quality` by name when the caller has
        them already (``fissure evaluate`` writes each set's plots too), so none is computed twice."""
        if self.task == "segment":
            slices, sources = S.segment_slices(self.scores)
            at = self.counts.metrics()["dice"]
            best_t, best = self.counts.best_threshold(0.0, 1.0)
            # the best single threshold, against the model's mask (with its hysteresis, if any)
            sweep = {"threshold": self.threshold, "dice": at, "best_threshold": best_t, "best_dice": best}
            if self.threshold_low is not None:
                sweep["threshold_low"] = self.threshold_low
            worst = [{"image": s.name, "source": s.source, "dice": s.dice, "relaxed_f1": s.relaxed_f1,
                      "truth_px": s.tp + s.fn, "false_px": s.fp, "missed_px": s.fn, "slices": s.slices}
                     for s, *_ in self.worst]
            out = {"slices": slices, **self.by_dataset(sources, parts), "threshold_sweep": sweep, "worst": worst,
                   "weakest_slice": S.weakest_slice(slices), "slice_definitions": S.DEFINITIONS}
        else:
            slices = S.classify_slices(self.y_true, self.probs, self.classes, self.sizes, self.negatives)
            sources = None if self.parts else S.classify_sources(
                [self.sources[_class_root(p)].source_of(p) for p in self.paths], self.y_true, self.probs,
                S.negative_class(self.classes))
            out = {"slices": slices, **self.by_dataset(sources, parts), "worst": self._confident_mistakes()}
            if self.probs.shape[1] == 2:
                rows = plots.score_sweep(self.y_true == 1, self.probs[:, 1])
                best = max(rows, key=lambda r: (r["f1"], -abs(r["threshold"] - 0.5)))
                out["threshold_sweep"] = {"threshold": 0.5, "f1": self.metrics["f1"],
                                          "best_threshold": best["threshold"], "best_f1": best["f1"]}
            out["weakest_slice"] = S.weakest_slice(slices, metric="recall")
        if self.datasets:  # several folders: which one each of the worst came from
            for entry, i in zip(out["worst"], self._worst_indices()):
                entry["dataset"] = self.datasets[i]
        return deep_clean(out)

    def by_dataset(self, sources: dict | None, parts: dict[str, dict] | None = None) -> dict:
        """``datasets_by`` and ``datasets``: after :meth:`combine` one entry per folder
        (:meth:`dataset_entry`), else ``sources`` (the items' scores per source: ``fissure data
        prepare`` prefixes every file with its source, so one prepared split holds several).
        ``parts``: each folder's :meth:`quality` by name, when known (:meth:`quality`)."""
        if self.parts:
            parts = parts or {}
            return {"datasets_by": "folder",
                    "datasets": {name: r.dataset_entry(folder, parts.get(name))
                                 for name, (folder, r) in self.parts.items()}}
        return {"datasets_by": "source", "datasets": sources}

    def dataset_entry(self, folder: str, quality: dict | None = None) -> dict:
        """This set's part of a report on several: its folder, scores and where it fails (its
        worst predictions are among the report's, and in its own plots); its sources when several.
        ``quality``: this set's :meth:`quality` when the caller has it (read, not changed)."""
        quality = self.quality() if quality is None else quality
        entry = {"data": str(folder), **_headline(self), "slices": quality["slices"]}
        if self.task == "segment":  # as a slice says it: whether its Dice scores any crack
            entry["truth_px"] = self.counts.tp + self.counts.fn
        if len(quality["datasets"]) > 1:
            entry.update({k: quality[k] for k in ("datasets_by", "datasets")})
        entry.update({k: quality[k] for k in ("threshold_sweep", "weakest_slice") if k in quality})
        return entry

    def _worst_indices(self) -> list[int]:
        """The items of ``worst`` (segment) or of the most confident mistakes (classify), in order."""
        if self.task == "segment":
            index = {id(s): i for i, s in enumerate(self.scores)}
            return [index[id(s)] for s, *_ in self.worst]
        pred = self.probs.argmax(axis=1)
        wrong = np.nonzero(pred != self.y_true)[0]
        conf = self.probs[wrong, pred[wrong]]
        return wrong[np.argsort(-conf, kind="mergesort")][: self.n_worst].tolist()

    def _confident_mistakes(self) -> list[dict]:
        pred = self.probs.argmax(axis=1)
        return [{"image": Path(self.paths[i]).name, "true": self.classes[int(self.y_true[i])],
                 "predicted": self.classes[int(pred[i])], "confidence": float(self.probs[i, pred[i]])}
                for i in self._worst_indices()]

    def write_plots(self, out_dir: str | Path, prefix: str = "", quality: dict | None = None) -> list[Path]:
        """PR curve (CSV + PNG), confusion matrix (CSV for classification + PNG), overlays (segment),
        threshold sweep (CSV + PNG; not for an N-class classifier, which has no one score to threshold),
        the worst predictions (``worst.png`` and ``worst/NN-<image>.png``),
        scores per slice (``slices.csv`` + PNG), per image (segment: ``per_image.csv``) and
        ``quality.json`` (the set's metrics and :meth:`quality`; ``quality``: that dict when the
        caller has it, read, not changed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        name = MODEL_NAMES[self.task]
        pr_title, pr_axes = f"{name}: precision-recall", {}
        if self.task == "classify":
            binary = self.probs.shape[1] == 2
            pos = self.probs[:, 1] if binary else self.probs.max(axis=1)
            truth = (self.y_true == 1) if binary else (self.y_true == self.probs.argmax(1))
            p, r, t = plots.pr_points(truth, pos)
            if not binary:  # no positive class: is the top prediction right, kept by its confidence
                pr_title = f"{name}: top prediction by confidence"
                pr_axes = {"xlabel": "correct top predictions kept (confidence >= t)",
                           "ylabel": "accuracy of the predictions kept"}
            pred = self.probs.argmax(axis=1)
            cm = M.confusion_matrix(self.y_true, pred, len(self.classes))
            files.append(plots.write_pr_csv(out / f"{prefix}pr_curve.csv", p, r, t))
            files.append(plots.write_confusion_csv(out / f"{prefix}confusion.csv", self.y_true, pred, self.classes))
            files.append(plots.save(plots.confusion_figure(cm, self.classes, f"{name}: confusion"), out / f"{prefix}confusion_matrix.png"))
            if self.probs.shape[1] == 2:
                rows = plots.score_sweep(self.y_true == 1, self.probs[:, 1])
                files.append(plots.write_rows_csv(out / f"{prefix}threshold_sweep.csv", rows))
                files.append(plots.save(plots.sweep_figure(rows, 0.5, f"{name}: threshold sweep (P(crack))"),
                                        out / f"{prefix}threshold_sweep.png"))
            files += self._write_mistakes(out, prefix)
        else:
            p, r, t = self.counts.pr_curve()
            cm = np.array([[self.counts.tn, self.counts.fp], [self.counts.fn, self.counts.tp]])
            files.append(plots.write_pr_csv(out / f"{prefix}pr_curve.csv", p, r, t))
            files.append(plots.save(plots.confusion_figure(cm, self.classes, f"{name}: pixels"), out / f"{prefix}confusion_matrix.png"))
            if self.samples:
                files.append(plots.save(plots.overlays_figure(self.samples), out / f"{prefix}overlays.png"))
            rows = plots.pixel_sweep(self.counts)
            files.append(plots.write_rows_csv(out / f"{prefix}threshold_sweep.csv", rows))
            files.append(plots.save(plots.sweep_figure(rows, self.threshold, f"{name}: threshold sweep (pixels)",
                                                       fields=("precision", "recall", "f1")),
                                    out / f"{prefix}threshold_sweep.png"))
            files.append(plots.write_rows_csv(out / f"{prefix}per_image.csv", [s.row() for s in self.scores]))
            files += self._write_worst(out, prefix)
        files.append(plots.save(plots.pr_figure(p, r, pr_title, **pr_axes), out / f"{prefix}pr_curve.png"))
        quality = self.quality() if quality is None else quality
        by = quality["datasets_by"]  # rows source:NAME or folder:NAME after the slices, their scores alone
        slice_rows = [{"slice": k, **v} for k, v in quality["slices"].items()] + [
            {"slice": f"{by}:{k}", **{f: x for f, x in v.items() if x is None or isinstance(x, (int, float))}}
            for k, v in quality["datasets"].items()]
        files.append(plots.write_rows_csv(out / f"{prefix}slices.csv", slice_rows, digits=6))
        fields = ("dice", "relaxed_f1") if self.task == "segment" else ("f1", "recall")
        if slice_rows:
            files.append(plots.save(plots.slices_figure({r["slice"]: r for r in slice_rows}, f"{name}: by slice",
                                                        fields=fields), out / f"{prefix}slices.png"))
        quality_path = out / f"{prefix}quality.json"
        quality_path.write_text(json.dumps({"task": self.task, "n_images": self.n_images,
                                            "metrics": deep_clean(self.metrics), **quality}, indent=2) + "\n")
        files.append(quality_path)
        return files

    def _write_worst(self, out: Path, prefix: str) -> list[Path]:
        """``worst.png`` (all, worst first) and ``worst/NN-<image>.png`` (one each)."""
        folder = _empty_gallery(out, prefix)
        if not self.worst:
            return [plots.save(plots.message_figure("no images evaluated"), out / f"{prefix}worst.png")]
        samples = [(rgb, truth, pred, f"{s.name} ({s.source}): dice {s.dice:.3f}, relaxed F1 {s.relaxed_f1:.3f}")
                   for s, rgb, truth, pred in self.worst]
        files = [plots.save(plots.overlays_figure(samples), out / f"{prefix}worst.png")]
        for k, (sample, (score, *_)) in enumerate(zip(samples, self.worst), 1):
            files.append(plots.save(plots.overlays_figure([sample]), folder / f"{k:02d}-{Path(score.name).stem}.png"))
        return files

    def _write_mistakes(self, out: Path, prefix: str) -> list[Path]:
        """The classifier's most confident mistakes: ``worst.png`` and ``worst/NN-<image>.png``."""
        folder = _empty_gallery(out, prefix)
        mistakes = self._confident_mistakes()
        if not mistakes:
            return [plots.save(plots.message_figure("no mistakes on this set"), out / f"{prefix}worst.png")]
        samples = [(np.asarray(load_image(self.paths[i])),
                    f"{m['image']}\ntrue {m['true']}, predicted {m['predicted']} ({m['confidence']:.2f})")
                   for i, m in zip(self._worst_indices(), mistakes)]
        files = [plots.save(plots.patches_figure(samples), out / f"{prefix}worst.png")]
        for k, sample in enumerate(samples, 1):
            files.append(plots.save(plots.patches_figure([sample]),
                                    folder / f"{k:02d}-{Path(mistakes[k - 1]['image']).stem}.png"))
        return files


def _class_root(path) -> str:
    """DIR of DIR/<class>/<image>."""
    return str(Path(path).parent.parent)


def deep_clean(value):
    """:func:`clean` through nested dicts and lists."""
    if isinstance(value, dict):
        return {k: deep_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [deep_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if math.isnan(v) else round(v, 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _progress(task: str, items, enabled: bool | None) -> Progress:
    return Progress(f"evaluate {MODEL_NAMES[task]}", len(items), unit="images", enabled=enabled)


def _batches(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def check_counts(batch_size: int | None = None, overlays: int = 0, worst: int = 0) -> None:
    """Refuse a batch size below 1 (it would score no image at all, and an empty set scores a
    perfect 1.0) and a negative number of overlays or worst predictions, as the CLI's options do."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    for option, value in (("--overlays", overlays), ("--worst", worst)):
        if value < 0:
            raise UsageError(f"{option} must be at least 0, not {value}")


@torch.no_grad()
def evaluate_classifier(module, spec, items, *, batch_size=64, device="cpu", progress=False, worst=8) -> EvalResult:
    check_counts(batch_size, worst=worst)
    pcfg = preprocess_config(spec)
    module = module.to(device).eval()
    labels, probs, sizes = [], [], []
    with _progress("classify", items, progress) as bar:
        for chunk in _batches(items, batch_size):
            images = [load_image(path) for path, _ in chunk]
            x = torch.stack([image_to_tensor(img, pcfg) for img in images]).to(device)
            probs.append(torch.softmax(module(x).float(), dim=1).cpu().numpy())
            labels.extend(lbl for _, lbl in chunk)
            sizes.extend((img.height, img.width) for img in images)
            bar.advance(len(chunk))
    y_true, probs = np.asarray(labels, dtype=np.int64), np.concatenate(probs)
    paths = [str(path) for path, _ in items]
    sources = {folder: S.SourceIndex(folder) for folder in sorted({_class_root(p) for p in paths})}
    # hard negatives are crack-free items: only a crack / no_crack classifier has them
    drawn: dict = {}
    negatives = [S.classify_negatives(p, drawn) if probs.shape[1] == 2 and y == 0 else None
                 for p, y in zip(paths, y_true)]
    return EvalResult("classify", M.classification_metrics(y_true, probs), len(items), list(spec["classes"]),
                      y_true=y_true, probs=probs, paths=paths, sources=sources, sizes=sizes, negatives=negatives,
                      n_worst=worst)


@torch.no_grad()
def evaluate_segmenter(module, spec, items, *, batch_size=8, device="cpu", overlays=4, threshold=None,
                       progress=False, tiling: T.TilingConfig | None = None, worst: int = 8) -> EvalResult:
    """Pixel metrics at the native size of each mask, at ``threshold`` (default: the spec's, as served),
    with each image's scores and slices, and the ``worst`` images of lowest Dice (most wrong pixels first among equals).

    ``tiling`` in tile mode: each image at its own resolution in tiles (``tiling.batch`` tiles a
    forward pass), as served; otherwise the whole image at the model's size."""
    check_counts(batch_size, overlays, worst)
    tiled = tiling is not None and tiling.tiles
    shipped, low = mask_params(spec)
    threshold = shipped if threshold is None else threshold
    low = low if low is not None and low < threshold else None  # an override may pass it
    pcfg = preprocess_config(spec)
    module = module.to(device).eval()
    counts = M.PixelCounts(threshold=threshold, low=low)  # its sweep: of the masks served
    want = set(np.linspace(0, len(items) - 1, min(overlays, len(items))).round().astype(int).tolist()) if overlays else set()
    samples, index = [], 0
    scores, heap, sources = [], [], {}
    with _progress("segment", items, progress) as bar:
        for chunk in _batches(items, batch_size):
            images = [load_image(it.image) for it in chunk]
            if tiled:
                probs = [None] * len(images)
            else:
                x = torch.stack([image_to_tensor(img, pcfg) for img in images]).to(device)
                probs = torch.sigmoid(module(x).float())
            for img, it, prob in zip(images, chunk, probs):
                mask = load_mask(it.mask)
                if mask.shape != (img.height, img.width):
                    raise FissureError(f"{it.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {img.width}x{img.height}")
                if tiled:
                    pixels = torch.from_numpy(T.model_pixels(img, pcfg, tiling))
                    native = T.segment_probabilities(module, pixels, pcfg, tiling, out_size=mask.shape,
                                                     device=device)[0].cpu().numpy()
                else:
                    native = F.interpolate(prob[None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
                pred = crack_mask(native, threshold, low)
                counts.update(native, mask, pred)
                folder = str(Path(it.image).parent.parent)
                if folder not in sources:
                    sources[folder] = S.SourceIndex(folder)
                score = S.score_image(Path(it.image).name, sources[folder].source_of(it.image), pred, mask,
                                      negatives=S.synth_negatives(it.image, mask.shape))
                scores.append(score)
                key = (-score.dice, score.fp + score.fn, -index)  # the heap's root: the best image kept
                if worst and (len(heap) < worst or key > heap[0][0]):
                    entry = (key, S.thumbnail(np.asarray(img), mask > 0, pred))
                    (heapq.heappush if len(heap) < worst else heapq.heapreplace)(heap, entry)
                if index in want:
                    samples.append((np.asarray(img), mask, pred, Path(it.image).name))
                index += 1
            bar.advance(len(chunk))
    metrics = _segment_metrics(counts, scores)
    by_index = {-key[2]: thumb for key, thumb in heap}
    worst_list = [(scores[i], *by_index[i]) for i in sorted(by_index, key=lambda i: (scores[i].dice,
                                                                                      -(scores[i].fp + scores[i].fn), i))]
    return EvalResult("segment", metrics, len(items), list(spec["classes"]), counts=counts, samples=samples,
                      threshold=threshold, threshold_low=low,
                      scores=scores, worst=worst_list, n_worst=worst)


def _segment_metrics(counts: M.PixelCounts, scores: list) -> dict:
    """A segmentation set's strict scores (its pixel counts) and tolerant ones (its images')."""
    relaxed = M.RelaxedCounts()
    for score in scores:
        relaxed.merge(score.relaxed)
    return {**counts.metrics(), **relaxed.metrics(), "relaxed_tolerance_px": relaxed.tolerance}


def evaluate_items(module, spec, items, *, device="cpu", batch_size=None, overlays=4, progress=False,
                   native: bool | None = None, worst: int = 8) -> EvalResult:
    """``progress`` as in :class:`fissure.progress.Progress` (``enabled``); ``native``: tile a
    segmenter at each image's own resolution (None: as the spec says); ``worst``: how many of the
    worst predictions to keep for the gallery. The module answers with the views the spec's ``tta``
    averages, as served."""
    module = tta.wrap(module, spec.get("tta"))
    if spec["task"] == "segment":
        tiling = T.tiling_config(spec, native)
        if tiling.tiles and batch_size is not None:  # tiles per forward pass
            tiling = tiling.model_copy(update={"batch": batch_size})
        return evaluate_segmenter(module, spec, items, batch_size=8 if batch_size is None else batch_size, device=device,
                                  overlays=overlays, progress=progress, tiling=tiling, worst=worst)
    return evaluate_classifier(module, spec, items, batch_size=64 if batch_size is None else batch_size, device=device,
                               progress=progress, worst=worst)


def clean(metrics: dict) -> dict:
    """JSON-safe floats (NaN -> None), rounded to 6 digits."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float):
            out[k] = None if math.isnan(v) else round(v, 6)
        else:
            out[k] = v
    return out


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def dataset_folders(values) -> dict[str, Path]:
    """``--data`` values (``DIR`` or ``NAME=DIR``) by name. A folder is named as ``fissure data
    prepare`` tags a source: its last two path parts (``datasets/crackforest/all`` ->
    ``crackforest-all``). Two folders of one name are a usage error: name them."""
    out: dict[str, Path] = {}
    for value in values:
        value = str(value)
        name, sep, folder = value.partition("=")
        if not sep or not _NAME.fullmatch(name) or Path(value).exists():
            name, folder = source_tag(value, set()), value
        if name in out:
            same = Path(folder).resolve() == out[name].resolve()
            raise UsageError(f"--data {folder} is given twice" if same else
                             f"--data {out[name]} and {folder} are both named {name}: name them, --data NAME=DIR")
        out[name] = Path(folder)
    if not out:
        raise UsageError("no --data folder given")
    return out


def _headline(result: EvalResult) -> dict:
    """The set's named metrics (classify: with each class's scores and the confusion counts)."""
    names = M.CLASSIFICATION_METRICS if result.task == "classify" else (
        *M.SEGMENTATION_METRICS, *M.RELAXED_METRICS, "relaxed_tolerance_px")
    out = {k: result.metrics[k] for k in names}
    if result.task == "classify":  # which classes the macro averages hide (a rare defect class)
        per_class, cm = result.class_scores()
        out["per_class"] = {c: clean(m) for c, m in per_class.items()}
        out["confusion"] = {"classes": result.classes, "counts": cm.tolist()}
    out["n_images"] = result.n_images
    return clean(out)


def run_evaluation(model_uri: str, task: str, data, out: str | Path, plots_dir=None,
                   *, device: str | None = None, batch_size: int | None = None, overlays: int = 4,
                   progress: bool | None = True, native: bool | None = None, worst: int = 8,
                   tta: str | None = None, threshold: float | None = None,
                   threshold_low: float | str | None = None) -> dict:
    """Load ``model_uri``, check its task, evaluate on ``data`` (showing ``progress`` on stderr),
    write ``out`` JSON (+ plots). ``data``: one folder, or folders by name (:func:`dataset_folders`),
    each scored on its own and all together. ``native``: segment at native resolution in tiles
    (True), the whole image resized (False), or as the model's spec says (None). ``tta``: the views
    averaged (:mod:`fissure.models.tta`), None as the spec says. ``threshold``, ``threshold_low``
    (segment): the masks scored, instead of the spec's (``threshold_low`` ``"none"``: no hysteresis).

    ``datasets`` in the JSON: per folder when there are several (each with its slices, sources,
    threshold sweep and weakest slice; plots in ``PLOTS/datasets/<name>/``), else per source of the
    one folder (``fissure data prepare``'s held-back sets: synth, each real folder, feedback)."""
    from fissure.models import io
    from fissure.training.loop import pick_device, set_threads
    from fissure.training.tracking import quiet_mlflow

    if native is not None and task != "segment":
        raise UsageError(f"--{'native' if native else 'resized'} applies to --task segment: "
                         "a classifier's label is of the whole image")
    if task != "segment" and (threshold is not None or threshold_low is not None):
        raise UsageError("--threshold and --threshold-low apply to --task segment: they draw a segmenter's masks")
    check_counts(batch_size, overlays, worst)  # before the model loads; the scoring functions check too
    folders = dict(data) if isinstance(data, dict) else {"": Path(data)}
    quiet_mlflow()
    set_threads()
    loaded = io.load_model(model_uri)
    if loaded.task != task:
        raise FissureError(
            f"--task {task} but {model_uri} is a {loaded.task} model ({loaded.spec.get('name')}); "
            f"use --task {loaded.task}"
        )
    spec = loaded.spec if tta is None else {**loaded.spec, "tta": tta}
    if threshold is not None:
        spec = {**spec, "threshold": float(threshold)}
    if threshold_low is not None:
        spec = {**spec, "threshold_low": None if threshold_low == "none" else float(threshold_low)}
    classes = spec["classes"] if task == "classify" else None
    items = {name: eval_items(task, folder, classes)[0] for name, folder in folders.items()}  # every folder before any work
    dev = pick_device(device)
    results = {name: evaluate_items(loaded.module, spec, its, device=str(dev), batch_size=batch_size,
                                    overlays=overlays, progress=progress, native=native, worst=worst)
               for name, its in items.items()}
    result = results[""] if "" in results else EvalResult.combine(results, folders)
    report = _headline(result)
    report.update(
        task=task,
        model=loaded.name or loaded.spec.get("name"),
        model_version=loaded.version,
        model_uri=model_uri,
        run_id=loaded.run_id,
        data=str(folders[""]) if "" in folders else [str(f) for f in folders.values()],
        tta=spec.get("tta") or "none",
    )
    if task == "segment":
        tiling = T.tiling_config(loaded.spec, native)
        report["resolution"] = "native" if tiling.tiles else "resized"
        if tiling.tiles:
            # images over the pixel budget were scored downscaled (masks back at native size), as served
            downscaled = sum(T.working_size(s.height, s.width, tiling) != (s.height, s.width) for s in result.scores)
            report["tiling"] = {"tile": tiling.tile, "overlap": tiling.overlap, "max_pixels": tiling.max_pixels,
                                "downscaled_images": downscaled}
    # each set's quality once: the report, its folder entries and all the plots share it
    part_quality = {name: r.quality() for name, r in results.items()} if "" not in results else {}
    quality = result.quality(part_quality)
    # slices, datasets_by, datasets, threshold_sweep, worst, weakest_slice; slice_definitions only in
    # quality.json and the docs (as metrics, seven text columns)
    report.update({k: v for k, v in quality.items() if k != "slice_definitions"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if plots_dir:
        result.write_plots(plots_dir, quality=quality)
        for name, q in part_quality.items():
            results[name].write_plots(Path(plots_dir) / "datasets" / name, quality=q)
    return report
