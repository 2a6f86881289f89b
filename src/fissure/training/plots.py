"""Figures and plot data for MLflow artifacts and ``dvc plots``.

PNG figures (matplotlib, Agg backend) plus CSV data that DVC templates render:
``pr_curve.csv`` (recall, precision, threshold; for an N-class classifier, whose top prediction is
either right or wrong, the share of its correct predictions at or above each confidence and the
share correct there), ``confusion.csv`` (actual, predicted; one row
per classified image), ``threshold_sweep.csv`` (threshold, precision, recall, f1 [, dice]; its PNG
marks the model's threshold), ``slices.csv`` (one row per slice) and ``overlays.png`` /
``worst.png`` (image | truth | prediction; green = hit, red = false alarm, blue = miss).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pr_points(y_true, scores, max_points: int = 400):
    """(precision, recall, threshold) for binary scores, thresholds descending, thinned."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], dtype=int)
    tp = np.cumsum(t)[distinct].astype(np.float64)
    fp = (distinct + 1 - tp).astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(t.sum(), 1)
    thresholds = s[distinct]
    if len(thresholds) > max_points:
        keep = np.unique(np.linspace(0, len(thresholds) - 1, max_points).round().astype(int))
        precision, recall, thresholds = precision[keep], recall[keep], thresholds[keep]
    return precision, recall, thresholds


def write_pr_csv(path: Path, precision, recall, thresholds) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["recall", "precision", "threshold"])
        for r, p, t in sorted(zip(recall, precision, thresholds), key=lambda row: (row[0], -row[1])):
            w.writerow([f"{r:.5f}", f"{p:.5f}", f"{t:.5f}"])
    return path


def pr_figure(precision, recall, title: str, xlabel: str = "recall", ylabel: str = "precision"):
    """The curve of ``precision`` against ``recall`` (axes named ``xlabel`` / ``ylabel`` when the
    points measure something else: an N-class classifier's top prediction against its confidence)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    order = np.argsort(recall, kind="mergesort")
    ax.plot(np.asarray(recall)[order], np.asarray(precision)[order], lw=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(cm: np.ndarray, classes: list[str], title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(classes), 1.3 + 1.0 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    top = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return fig


def write_confusion_csv(path: Path, y_true, y_pred, classes: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["actual", "predicted"])
        for a, p in zip(y_true, y_pred):
            w.writerow([classes[int(a)], classes[int(p)]])
    return path


def loss_figure(history: list[dict], metric: str):
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h.get(f"val_{metric}") or 0 for h in history], color="tab:green")
    ax2.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 image with hits green, false alarms red, misses blue."""
    out = image.astype(np.float32).copy()
    for mask, colour in ((truth & pred, (0, 220, 0)), (~truth & pred, (255, 0, 0)), (truth & ~pred, (0, 80, 255))):
        out[mask] = 0.35 * out[mask] + 0.65 * np.asarray(colour, dtype=np.float32)
    return out.clip(0, 255).astype(np.uint8)


def overlays_figure(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]):
    """``samples``: (rgb uint8 HxWx3, truth bool HxW, pred bool HxW, caption)."""
    plt = _plt()
    n = max(len(samples), 1)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row, (img, truth, pred, caption) in zip(axes, samples):
        row[0].imshow(img)
        row[0].set_title(caption, fontsize=8)
        row[1].imshow(truth, cmap="gray")
        row[1].set_title("truth", fontsize=8)
        row[2].imshow(overlay(img, truth, pred))
        row[2].set_title("prediction (green hit, red false, blue miss)", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


def pixel_sweep(counts) -> list[dict]:
    """Crack-pixel precision, recall, F1 and Dice (equal for binary masks) at each threshold of a
    :class:`~fissure.training.metrics.PixelCounts` histogram."""
    precision, recall, thresholds = counts.pr_curve()
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(recall),
                   where=(precision + recall) > 0)
    return [{"threshold": float(t), "precision": float(p), "recall": float(r), "f1": float(f), "dice": float(f)}
            for t, p, r, f in zip(thresholds, precision, recall, f1)]


def score_sweep(y_true, scores, steps: int = 100) -> list[dict]:
    """Precision, recall, F1 and accuracy of ``scores >= threshold`` against boolean ``y_true``
    at ``steps`` + 1 thresholds from 0 to 1."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    rows = []
    for t in np.linspace(0.0, 1.0, steps + 1):
        pred = scores >= t
        tp, fp = int((pred & y_true).sum()), int((pred & ~y_true).sum())
        fn = int((~pred & y_true).sum())
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 0.0
        rows.append({"threshold": float(t), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                     "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0})
    return rows


def write_rows_csv(path: Path, rows: list[dict], digits: int = 5) -> Path:
    """One row per dict (columns: every key, in order of first appearance); floats rounded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in row.items()})
    return path


def sweep_figure(rows: list[dict], threshold: float, title: str, fields=("precision", "recall", "f1")):
    """The sweep's curves against the threshold, the model's threshold a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    t = [r["threshold"] for r in rows]
    for name in fields:
        ax.plot(t, [r[name] for r in rows], lw=2, label=name if name != "f1" or "dice" not in rows[0] else "f1 = dice")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"model threshold {threshold:.2f}")
    ax.set(xlabel="threshold", ylabel="score", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def slices_figure(slices: dict, title: str, fields=("dice", "relaxed_f1")):
    """Horizontal bars of each slice's scores (with its image count)."""
    plt = _plt()
    names = list(slices)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.38 * max(len(names), 1)))
    y = np.arange(len(names))
    height = 0.8 / len(fields)
    for k, f in enumerate(fields):
        ax.barh(y + k * height, [slices[n].get(f) or 0.0 for n in names], height=height, label=f)
    def label(n):
        m = slices[n]
        extra = f", false alarms {m['false_alarm_rate']:.0%}" if not m.get("truth_px") and m.get("false_alarm_rate") is not None else ""
        return f"{n} ({m.get('n_images', 0)}{extra})"

    ax.set_yticks(y + height * (len(fields) - 1) / 2, [label(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="score", title=title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def patches_figure(samples: list[tuple[np.ndarray, str]], cols: int = 4):
    """A grid of images with captions (the classifier's most confident mistakes)."""
    plt = _plt()
    n = max(len(samples), 1)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (img, caption) in zip(axes.ravel(), samples):
        ax.imshow(img)
        ax.set_title(caption, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


def message_figure(text: str):
    """A small figure holding one line of text (a gallery with nothing to show)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path
