"""Metrics by their public names (the JSON written by ``fissure evaluate`` uses exactly these).

Classification: ``accuracy, balanced_accuracy, precision, recall, f1, roc_auc``. For two
classes the positive class is index 1 (``crack``); for N classes precision/recall/F1/ROC-AUC
are macro averages (one-vs-rest) over the classes present in the labels: a class with no item in
the set has no recall to average, so macro recall equals ``balanced_accuracy``, the mean recall
over the classes present (robust to a rare defect class; sklearn's ``balanced_accuracy_score``,
and its macro scores with ``labels`` the classes present); :func:`per_class_metrics` gives each
class's own, every class listed.

Segmentation: ``dice, iou, precision, recall, f1`` of crack pixels, counted over all pixels of
the set (not averaged per image) at probability threshold 0.5.

Everything is plain numpy so that the numbers are the same in training, evaluation and tests.
``fissure evaluate`` adds the crack-detection literature's tolerant scores (CrackForest,
DeepCrack): ``relaxed_precision`` (share of predicted crack pixels within
``RELAXED_TOLERANCE`` px of a true one), ``relaxed_recall`` (share of true crack pixels within
that distance of a prediction) and ``relaxed_f1``. They forgive one- or two-pixel
disagreements on a crack's rim, so the gap between them and the strict scores says whether
errors are rim disagreements or spurious/missed cracks.

A ratio whose denominator is zero is 0.0, except that a set with no crack pixels predicted or
present scores dice = iou = f1 = 1.0 (perfect agreement on nothing); ROC-AUC is None when the
labels hold a single class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc")
SEGMENTATION_METRICS = ("dice", "iou", "precision", "recall", "f1")
RELAXED_METRICS = ("relaxed_precision", "relaxed_recall", "relaxed_f1")
RELAXED_TOLERANCE = 2  # px, at the mask's native size
# The validation metric early stopping watches, per task.
SELECTION_METRIC = {"classify": "f1", "segment": "dice"}


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[actual, predicted]``."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def binary_roc_auc(y_true, scores) -> float | None:
    """Area under the ROC curve via the rank statistic (ties count one half)."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true, probs) -> dict:
    """``probs``: [N, C] class probabilities (rows sum to 1). Returns the six named metrics (N classes:
    macro averages over the classes present in ``y_true``)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError("probs must be [N, C] with C >= 2")
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    num_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    prec = np.array([_div(tp[c], tp[c] + fp[c]) for c in range(num_classes)])
    rec = np.array([_div(tp[c], tp[c] + fn[c]) for c in range(num_classes)])
    f1 = np.array([_div(2 * prec[c] * rec[c], prec[c] + rec[c]) for c in range(num_classes)])
    present = cm.sum(axis=1) > 0  # classes with items in the set: the only ones with a recall
    if num_classes == 2:
        precision, recall, f1_score = prec[1], rec[1], f1[1]
        auc = binary_roc_auc(y_true == 1, probs[:, 1])
    else:
        precision, recall, f1_score = ((v[present].mean() if present.any() else 0.0) for v in (prec, rec, f1))
        aucs = [binary_roc_auc(y_true == c, probs[:, c]) for c in range(num_classes)]
        aucs = [a for a in aucs if a is not None]
        auc = float(np.mean(aucs)) if aucs else None
    return {
        "accuracy": _div(tp.sum(), len(y_true)),
        "balanced_accuracy": float(rec[present].mean()) if present.any() else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1_score),
        "roc_auc": auc,
    }


def per_class_metrics(y_true, y_pred, classes: list[str]) -> dict[str, dict]:
    """Each class's precision, recall, F1 and support (true items), by class name."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    out = {}
    for c, name in enumerate(classes):
        tp, predicted, actual = float(cm[c, c]), float(cm[:, c].sum()), float(cm[c].sum())
        p, r = _div(tp, predicted), _div(tp, actual)
        out[name] = {"precision": p, "recall": r, "f1": _div(2 * p * r, p + r), "support": int(actual)}
    return out


@dataclass
class PixelCounts:
    """Running pixel confusion counts for a segmentation set, plus a probability histogram
    (for the PR curve) that costs O(bins) memory however many pixels are seen.

    With ``low`` (a hysteresis low threshold, :func:`fissure.models.masks.crack_mask`) the PR
    curve, and so the threshold sweep, is of the hysteresis masks at each threshold above
    ``low``: the masks the model serves, not the pixels' probabilities alone."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    bins: int = 200
    threshold: float = 0.5
    low: float | None = None

    def __post_init__(self):
        self.pos_hist = np.zeros(self.bins, dtype=np.int64)
        self.neg_hist = np.zeros(self.bins, dtype=np.int64)
        # hysteresis masks at each bin edge: pixels marked, and true crack pixels among them
        self.hy_marked = np.zeros(self.bins, dtype=np.int64)
        self.hy_hits = np.zeros(self.bins, dtype=np.int64)

    def update(self, probs, target, pred=None) -> None:
        """``probs`` in [0, 1] and boolean/0-1 ``target`` of the same shape (numpy or torch);
        ``pred``: the mask counted, when not ``probs >= threshold`` (a hysteresis mask,
        :func:`fissure.models.masks.crack_mask`); the histogram is of ``probs`` either way.
        With ``low``, ``probs`` and ``target`` are maps [..., H, W] (each [H, W] one image)."""
        probs, target = _np(probs).astype(np.float32), _np(target) > 0.5
        if self.low is not None:
            from fissure.models.masks import hysteresis_counts

            for prob, truth in zip(probs.reshape(-1, *probs.shape[-2:]), target.reshape(-1, *target.shape[-2:])):
                marked, hits = hysteresis_counts(prob, truth, self.low, self.bins)
                self.hy_marked += marked
                self.hy_hits += hits
        probs, target = probs.ravel(), target.ravel()
        pred = probs >= self.threshold if pred is None else _np(pred).ravel() > 0.5
        self.tp += int(np.count_nonzero(pred & target))
        self.fp += int(np.count_nonzero(pred & ~target))
        self.fn += int(np.count_nonzero(~pred & target))
        self.tn += int(np.count_nonzero(~pred & ~target))
        idx = np.clip((probs * self.bins).astype(np.int64), 0, self.bins - 1)
        self.pos_hist += np.bincount(idx[target], minlength=self.bins)
        self.neg_hist += np.bincount(idx[~target], minlength=self.bins)

    def merge(self, other: "PixelCounts") -> "PixelCounts":
        """Add ``other``'s counts and histogram (another set, same threshold and bins) to these."""
        if (other.bins, other.threshold, other.low) != (self.bins, self.threshold, self.low):
            raise ValueError("PixelCounts.merge: different bins, threshold or low")
        self.tp, self.fp, self.fn, self.tn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        self.pos_hist += other.pos_hist
        self.neg_hist += other.neg_hist
        self.hy_marked += other.hy_marked
        self.hy_hits += other.hy_hits
        return self

    def metrics(self) -> dict:
        return segmentation_metrics_from_counts(self.tp, self.fp, self.fn)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, recall, threshold) at each bin edge, thresholds ascending (with ``low``, of
        the hysteresis masks at the edges above it)."""
        tp = np.cumsum(self.pos_hist[::-1])[::-1].astype(np.float64)  # pixels with prob >= edge
        fp = np.cumsum(self.neg_hist[::-1])[::-1].astype(np.float64)
        thresholds = np.arange(self.bins) / self.bins
        if self.low is not None:
            above = thresholds > self.low
            tp = np.where(above, self.hy_hits, tp)
            fp = np.where(above, self.hy_marked - self.hy_hits, fp)
        npos = max(self.pos_hist.sum(), 1)
        precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
        recall = tp / npos
        return precision, recall, thresholds

    def best_threshold(self, low: float = 0.05, high: float = 0.95) -> tuple[float, float]:
        """(threshold, F1) with the highest crack-pixel F1 (= Dice) among the bin edges in
        [low, high]; ties go to the threshold nearest 0.5."""
        precision, recall, thresholds = self.pr_curve()
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall),
                       where=(precision + recall) > 0)
        ok = (thresholds >= low) & (thresholds <= high)
        if not ok.any() or self.pos_hist.sum() == 0:
            return self.threshold, float("nan")
        score = np.where(ok, f1, -1.0) - 1e-9 * np.abs(thresholds - 0.5)
        i = int(np.argmax(score))
        return float(thresholds[i]), float(f1[i])


@dataclass
class RelaxedCounts:
    """Tolerant crack-pixel counts: a prediction within ``tolerance`` px (Euclidean) of a true
    crack pixel is correct, a true pixel within ``tolerance`` px of a prediction is found."""

    tolerance: int = RELAXED_TOLERANCE
    predicted: int = 0
    predicted_near: int = 0
    true: int = 0
    true_found: int = 0

    def update(self, pred, target) -> None:
        """Boolean ``pred`` and ``target`` masks [H, W] of one image."""
        from scipy import ndimage

        pred, target = _np(pred) > 0.5, _np(target) > 0.5
        disk = _disk(int(self.tolerance))
        self.predicted += int(np.count_nonzero(pred))
        self.predicted_near += int(np.count_nonzero(pred & ndimage.binary_dilation(target, disk)))
        self.true += int(np.count_nonzero(target))
        self.true_found += int(np.count_nonzero(target & ndimage.binary_dilation(pred, disk)))

    def merge(self, other: "RelaxedCounts") -> "RelaxedCounts":
        """Add ``other``'s counts (another image or set, same tolerance) to these."""
        self.predicted += other.predicted
        self.predicted_near += other.predicted_near
        self.true += other.true
        self.true_found += other.true_found
        return self

    def metrics(self) -> dict:
        if self.predicted + self.true == 0:
            return dict.fromkeys(RELAXED_METRICS, 1.0)
        precision, recall = _div(self.predicted_near, self.predicted), _div(self.true_found, self.true)
        return {"relaxed_precision": precision, "relaxed_recall": recall,
                "relaxed_f1": _div(2 * precision * recall, precision + recall)}


@functools.lru_cache(maxsize=4)
def _disk(r: int) -> np.ndarray:
    """Boolean disk of radius ``r`` (Euclidean), the structuring element of the tolerance."""
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= r * r


def segmentation_metrics_from_counts(tp: int, fp: int, fn: int) -> dict:
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    dice = _div(2 * tp, 2 * tp + fp + fn)
    return {
        "dice": dice,
        "iou": _div(tp, tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": dice,  # F1 of crack pixels equals Dice for binary masks
    }


def segmentation_metrics(probs, target, threshold: float = 0.5) -> dict:
    counts = PixelCounts(threshold=threshold)
    counts.update(probs, target)
    return counts.metrics()


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)
