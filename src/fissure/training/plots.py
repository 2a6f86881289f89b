"""Figures and plot data for MLflow artifacts and ``dvc plots``.

PNG figures (matplotlib, Agg backend) plus CSV data that DVC templates render:
``pr_curve.csv`` (recall, precision, threshold), ``confusion.csv`` (actual, predicted; one row
per classified image) and ``overlays.png`` (image | truth | prediction; green = hit, red =
false alarm, blue = miss).
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


def pr_figure(precision, recall, title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    order = np.argsort(recall, kind="mergesort")
    ax.plot(np.asarray(recall)[order], np.asarray(precision)[order], lw=2)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
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


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path
