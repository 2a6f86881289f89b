"""Evaluate a model on a folder: the metrics JSON of ``fissure evaluate`` and its plots.

Images of any size are accepted. Inputs go through the model's own preprocessing (resize to
the spec's size); segmentation probabilities are resized back to each mask's native size, so
the pixel metrics are those of the original resolution. With native-resolution tiling (the
spec's ``tiling.mode: tile``, or ``native=True``) a segmenter sees each image at its own size in
overlapping tiles, through the same code as serving (:mod:`fissure.models.tiling`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fissure import MODEL_NAMES
from fissure.errors import FissureError, UsageError
from fissure.models import preprocess_config
from fissure.models import tiling as T
from fissure.preprocess import image_to_tensor, load_image, load_mask
from fissure.progress import Progress
from fissure.training import metrics as M
from fissure.training import plots
from fissure.training.datasets import eval_items


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

    def write_plots(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """PR curve (CSV + PNG), confusion matrix (CSV for classification + PNG), overlays (segment)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        name = MODEL_NAMES[self.task]
        if self.task == "classify":
            pos = self.probs[:, 1] if self.probs.shape[1] == 2 else self.probs.max(axis=1)
            truth = (self.y_true == 1) if self.probs.shape[1] == 2 else (self.y_true == self.probs.argmax(1))
            p, r, t = plots.pr_points(truth, pos)
            pred = self.probs.argmax(axis=1)
            cm = M.confusion_matrix(self.y_true, pred, len(self.classes))
            files.append(plots.write_pr_csv(out / f"{prefix}pr_curve.csv", p, r, t))
            files.append(plots.write_confusion_csv(out / f"{prefix}confusion.csv", self.y_true, pred, self.classes))
            files.append(plots.save(plots.confusion_figure(cm, self.classes, f"{name}: confusion"), out / f"{prefix}confusion_matrix.png"))
        else:
            p, r, t = self.counts.pr_curve()
            cm = np.array([[self.counts.tn, self.counts.fp], [self.counts.fn, self.counts.tp]])
            files.append(plots.write_pr_csv(out / f"{prefix}pr_curve.csv", p, r, t))
            files.append(plots.save(plots.confusion_figure(cm, self.classes, f"{name}: pixels"), out / f"{prefix}confusion_matrix.png"))
            if self.samples:
                files.append(plots.save(plots.overlays_figure(self.samples), out / f"{prefix}overlays.png"))
        files.append(plots.save(plots.pr_figure(p, r, f"{name}: precision-recall"), out / f"{prefix}pr_curve.png"))
        return files


def _progress(task: str, items, enabled: bool | None) -> Progress:
    return Progress(f"evaluate {MODEL_NAMES[task]}", len(items), unit="images", enabled=enabled)


def _batches(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@torch.no_grad()
def evaluate_classifier(module, spec, items, *, batch_size=64, device="cpu", progress=False) -> EvalResult:
    pcfg = preprocess_config(spec)
    module = module.to(device).eval()
    labels, probs = [], []
    with _progress("classify", items, progress) as bar:
        for chunk in _batches(items, batch_size):
            x = torch.stack([image_to_tensor(load_image(path), pcfg) for path, _ in chunk]).to(device)
            probs.append(torch.softmax(module(x).float(), dim=1).cpu().numpy())
            labels.extend(lbl for _, lbl in chunk)
            bar.advance(len(chunk))
    y_true, probs = np.asarray(labels, dtype=np.int64), np.concatenate(probs)
    return EvalResult("classify", M.classification_metrics(y_true, probs), len(items), list(spec["classes"]),
                      y_true=y_true, probs=probs)


@torch.no_grad()
def evaluate_segmenter(module, spec, items, *, batch_size=8, device="cpu", overlays=4, threshold=None,
                       progress=False, tiling: T.TilingConfig | None = None) -> EvalResult:
    """Pixel metrics at the native size of each mask, at ``threshold`` (default: the spec's, as served).

    ``tiling`` in tile mode: each image at its own resolution in tiles (``tiling.batch`` tiles a
    forward pass), as served; otherwise the whole image at the model's size."""
    tiled = tiling is not None and tiling.tiles
    threshold = float(spec.get("threshold", 0.5)) if threshold is None else threshold
    pcfg = preprocess_config(spec)
    module = module.to(device).eval()
    counts = M.PixelCounts(threshold=threshold)
    relaxed = M.RelaxedCounts()
    want = set(np.linspace(0, len(items) - 1, min(overlays, len(items))).round().astype(int).tolist()) if overlays else set()
    samples, index = [], 0
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
                    pixels = torch.from_numpy(T.to_pixels(img, tiling))
                    native = T.segment_probabilities(module, pixels, pcfg, tiling, out_size=mask.shape,
                                                     device=device)[0].cpu().numpy()
                else:
                    native = F.interpolate(prob[None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
                counts.update(native, mask)
                relaxed.update(native >= threshold, mask)
                if index in want:
                    samples.append((np.asarray(img), mask, native >= threshold, Path(it.image).name))
                index += 1
            bar.advance(len(chunk))
    metrics = {**counts.metrics(), **relaxed.metrics(), "relaxed_tolerance_px": relaxed.tolerance}
    return EvalResult("segment", metrics, len(items), list(spec["classes"]), counts=counts, samples=samples)


def evaluate_items(module, spec, items, *, device="cpu", batch_size=None, overlays=4, progress=False,
                   native: bool | None = None) -> EvalResult:
    """``progress`` as in :class:`fissure.progress.Progress` (``enabled``); ``native``: tile a
    segmenter at each image's own resolution (None: as the spec says)."""
    if spec["task"] == "segment":
        tiling = T.tiling_config(spec, native)
        if tiling.tiles and batch_size:  # tiles per forward pass
            tiling = tiling.model_copy(update={"batch": batch_size})
        return evaluate_segmenter(module, spec, items, batch_size=batch_size or 8, device=device, overlays=overlays,
                                  progress=progress, tiling=tiling)
    return evaluate_classifier(module, spec, items, batch_size=batch_size or 64, device=device, progress=progress)


def clean(metrics: dict) -> dict:
    """JSON-safe floats (NaN -> None), rounded to 6 digits."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float):
            out[k] = None if math.isnan(v) else round(v, 6)
        else:
            out[k] = v
    return out


def run_evaluation(model_uri: str, task: str, data: str | Path, out: str | Path, plots_dir=None,
                   *, device: str | None = None, batch_size: int | None = None, overlays: int = 4,
                   progress: bool | None = True, native: bool | None = None) -> dict:
    """Load ``model_uri``, check its task, evaluate on ``data`` (showing ``progress`` on stderr),
    write ``out`` JSON (+ plots). ``native``: segment at native resolution in tiles (True), the
    whole image resized (False), or as the model's spec says (None)."""
    from fissure.models import io
    from fissure.training.loop import pick_device, set_threads
    from fissure.training.tracking import quiet_mlflow

    if native and task != "segment":
        raise UsageError("--native applies to --task segment: a classifier's label is of the whole image")
    quiet_mlflow()
    set_threads()
    loaded = io.load_model(model_uri)
    if loaded.task != task:
        raise FissureError(
            f"--task {task} but {model_uri} is a {loaded.task} model ({loaded.spec.get('name')}); "
            f"use --task {loaded.task}"
        )
    items, _ = eval_items(task, data, loaded.spec["classes"] if task == "classify" else None)
    dev = pick_device(device)
    result = evaluate_items(loaded.module, loaded.spec, items, device=str(dev), batch_size=batch_size, overlays=overlays,
                            progress=progress, native=native)
    names = M.CLASSIFICATION_METRICS if task == "classify" else (
        *M.SEGMENTATION_METRICS, *M.RELAXED_METRICS, "relaxed_tolerance_px")
    report = {k: result.metrics[k] for k in names}
    if task == "classify":  # which classes the macro averages hide (a rare defect class)
        pred = result.probs.argmax(axis=1)
        report["per_class"] = {c: clean(m) for c, m in M.per_class_metrics(result.y_true, pred, result.classes).items()}
        report["confusion"] = {"classes": result.classes,
                               "counts": M.confusion_matrix(result.y_true, pred, len(result.classes)).tolist()}
    report.update(
        n_images=result.n_images,
        task=task,
        model=loaded.name or loaded.spec.get("name"),
        model_version=loaded.version,
        model_uri=model_uri,
        run_id=loaded.run_id,
        data=str(data),
    )
    if task == "segment":
        tiling = T.tiling_config(loaded.spec, native)
        report["resolution"] = "native" if tiling.tiles else "resized"
        if tiling.tiles:
            report["tiling"] = {"tile": tiling.tile, "overlap": tiling.overlap, "max_pixels": tiling.max_pixels}
    report = clean(report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if plots_dir:
        result.write_plots(plots_dir)
    return report
