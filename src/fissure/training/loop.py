"""The training loop: seeded, validated every epoch, early-stopped, best weights restored.

CPU by default; CUDA when available, with mixed precision (autocast + GradScaler).
Classification uses class-weighted cross-entropy; segmentation BCE + soft Dice (plus the same loss
on the coarse decoder levels against pooled masks, with deep supervision).
"""

from __future__ import annotations

import copy
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fissure import MODEL_NAMES
from fissure.errors import FissureError
from fissure.models import build_model, default_spec, preprocess_config, tiling_config, tta
from fissure.models.tiling import segment_probabilities
from fissure.progress import Progress
from fissure.settings import settings
from fissure.training import metrics as M
from fissure.training.config import TrainConfig
from fissure.training.datasets import ClassificationDataset, SegmentationDataset, Splits


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_count() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def busy_cpus(window: float = 0.3) -> float:
    """How many CPUs other processes keep busy right now: /proc/stat's busy share over a short
    window (Linux), else the 1-minute load average. The load average lags: a pipeline stage
    that starts right after another would count the finished stage's threads as busy."""
    def sample():
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
        return (1 - (idle1 - idle0) / max(total1 - total0, 1e-9)) * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover
            return 0.0


def auto_threads() -> int:
    """CPUs this process may use, minus those other processes keep busy.

    OpenMP threads that compete with other processes for a core spin and stall each other;
    on a shared 2-core machine one thread is then several times faster than two.
    """
    cpus = cpu_count()
    return int(min(max(round(cpus - busy_cpus() + 0.25), 1), cpus))


def set_threads(threads: int = 0) -> int:
    """torch intra-op threads: ``threads``, else FISSURE_THREADS, else :func:`auto_threads`."""
    n = threads or settings().threads or auto_threads()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: a few CUDA kernels (e.g. upsampling backward) have no deterministic version.
    torch.use_deterministic_algorithms(True, warn_only=True)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    probs = torch.sigmoid(logits.float())
    inter = (probs * target).sum()
    return 1.0 - (2.0 * inter + eps) / (probs.sum() + target.sum() + eps)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """BCE (crack pixels weighted by ``pos_weight``) + soft Dice over the batch.

    The Dice term already balances the ~2 % of crack pixels; ``pos_weight`` > 1 trades
    precision for recall (fatter masks).
    """
    weight = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight)
    return bce + dice_loss(logits, target)


def deep_supervision_loss(aux_logits: list[torch.Tensor], target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean :func:`segmentation_loss` of the coarse heads against the max-pooled mask: a coarse
    cell is a crack when any of its pixels is (thin cracks must not vanish when pooled)."""
    losses = [
        segmentation_loss(a, F.max_pool2d(target, target.shape[-1] // a.shape[-1]), pos_weight) for a in aux_logits
    ]
    return torch.stack(losses).mean()


SKELETON_ITERS = 12  # erosions: cracks up to ~24 px wide at the model's size reduce to their centre line


def skeleton(mask: torch.Tensor, iters: int = SKELETON_ITERS) -> torch.Tensor:
    """Morphological skeleton of a binary mask [N, 1, H, W] (max-pool erosions and openings, as
    clDice's soft skeleton): a crack's centre line, one or two pixels wide whatever its width."""
    def erode(t):
        return torch.minimum(-F.max_pool2d(-t, (3, 1), 1, (1, 0)), -F.max_pool2d(-t, (1, 3), 1, (0, 1)))

    def opened(t):
        return F.max_pool2d(erode(t), 3, 1, 1)

    img = (mask > 0.5).float()
    skel = F.relu(img - opened(img))
    for _ in range(iters):
        img = erode(img)
        delta = F.relu(img - opened(img))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def skeleton_recall_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the soft recall of the cracks' centre lines over the batch (Kirchhoff et al. 2024,
    "Skeleton Recall Loss"): every crack counts by its length, not its area, so a thin faint one
    weighs as much as a wide dark one of the same length (Dice weighs it by its few pixels)."""
    skel = skeleton(target)
    return 1.0 - ((torch.sigmoid(logits.float()) * skel).sum() + eps) / (skel.sum() + eps)


def segmenter_batch_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The segmenter's training loss on a batch, with the deep-supervision and skeleton-recall
    terms when configured."""
    if cfg.aux_weight > 0:
        logits, aux = module(x, aux=True)
        loss = segmentation_loss(logits, y, cfg.pos_weight) + cfg.aux_weight * deep_supervision_loss(aux, y, cfg.pos_weight)
    else:
        logits = module(x)
        loss = segmentation_loss(logits, y, cfg.pos_weight)
    if cfg.skeleton_weight > 0:
        loss = loss + cfg.skeleton_weight * skeleton_recall_loss(logits, y)
    return loss


CLASS_WEIGHT_POWER = {"inverse": 1.0, "sqrt_inverse": 0.5, "none": 0.0}


def class_weights(labels: list[int], num_classes: int, mode: str = "inverse") -> torch.Tensor:
    """Inverse-frequency weights (``mode`` sqrt_inverse: their square root; none: all 1) normalised
    to mean 1 (absent classes get weight 1 before normalising)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 1.0) ** CLASS_WEIGHT_POWER[mode]
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val: dict
    seconds: float
    lr: float
    best: bool = False
    # segment: the score the epoch was chosen on when it is not val_dice ({"val_real_dice": ...}:
    # EpochSelector.logged)
    select: dict = field(default_factory=dict)

    def row(self) -> dict:
        extra = dict(self.select)
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
                **{f"val_{k}": v for k, v in self.val.items()}, **extra, "seconds": self.seconds, "lr": self.lr}


@dataclass
class FitResult:
    module: nn.Module
    spec: dict
    history: list[EpochLog]
    best_epoch: int
    best_val: dict
    stopped_early: bool
    seconds: float
    device: str
    train_images: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.train_images / max(sum(h.seconds for h in self.history), 1e-9)


def make_spec(task: str, cfg: TrainConfig, classes: list[str]) -> dict:
    spec = default_spec(task, size=cfg.size, gray_std=cfg.gray_std, classes=list(classes), **dict(cfg.model))
    if cfg.tta != "none":
        spec["tta"] = cfg.tta
    if cfg.tiling is not None:  # how the model sees large images (fissure.models.tiling), as params say
        spec["tiling"] = {"tile": cfg.size, **cfg.tiling}
    return spec


def _loader(dataset, batch_size, *, shuffle, seed, num_workers, drop_last=False):
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
        drop_last=drop_last, persistent_workers=num_workers > 0,
    )


def fit(
    task: str,
    splits: Splits,
    cfg: TrainConfig,
    *,
    device: str | None = None,
    progress: bool | None = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
    init_state: dict | None = None,
) -> FitResult:
    """Train a model for ``task`` on ``splits``; returns the best-on-validation model.

    ``progress``: the epoch, its metrics and an ETA (:class:`fissure.progress.Progress`: a live
    bar on a terminal, a line per epoch elsewhere; None: the bar only; False: nothing).
    """
    start = time.perf_counter()
    threads = set_threads(cfg.threads)
    seed_everything(cfg.seed)
    dev = pick_device(device)
    spec = make_spec(task, cfg, splits.classes)
    pcfg = preprocess_config(spec)
    module = build_model(spec)
    if init_state is not None:  # fine-tuning: start from these weights (same architecture)
        try:
            module.load_state_dict(init_state)
        except RuntimeError as exc:
            raise FissureError(f"cannot start from the given weights, the architecture differs "
                               f"({str(exc).splitlines()[0]}); set init: scratch") from None
    module = module.to(dev)
    amp = dev.type == "cuda"

    tiled = None
    if task == "segment":
        # A model served in native-resolution tiles trains on crops of the images at that
        # resolution and is validated in tiles: resized training would teach it crack widths the
        # served tiles never show.
        tiling = tiling_config(spec)
        tiled = tiling if tiling.tiles else None
        crop = cfg.crop or (cfg.size if tiled else 0)
        train_ds = SegmentationDataset(splits.train, pcfg, crop=crop, augment=cfg.augment, crack_bias=cfg.crack_bias,
                                      hard_negatives=cfg.hard_negatives, extra_cracks=cfg.extra_cracks,
                                      contrast=cfg.contrast, scale=cfg.scale, fade=cfg.fade, blur=cfg.blur,
                                      noise=cfg.noise, tiling=tiled)
        val_ds = SegmentationDataset(splits.val, pcfg, tiling=tiled)
        val_groups = val_sources(splits)  # the source of each validation image: the threshold's pixels
        criterion = lambda logits, y: segmentation_loss(logits, y, cfg.pos_weight)  # noqa: E731
        if cfg.aux_weight > 0 and getattr(module, "aux_heads", None) is None:
            raise FissureError("aux_weight > 0 needs a model with deep_supervision: true (train_segmenter.model)")
        batch_loss = lambda x, y: segmenter_batch_loss(module, x, y, cfg)  # noqa: E731
    else:
        train_ds = ClassificationDataset(splits.train, pcfg, augment=cfg.augment, contrast=cfg.contrast,
                                         fade=cfg.fade, blur=cfg.blur, noise=cfg.noise)
        val_ds = ClassificationDataset(splits.val, pcfg)
        val_groups = None
        weights = class_weights([lbl for _, lbl in splits.train], len(splits.classes), cfg.class_weights).to(dev)
        ce = nn.CrossEntropyLoss(weight=weights)
        criterion = lambda logits, y: ce(logits.float(), y)  # noqa: E731
        batch_loss = lambda x, y: criterion(module(x), y)  # noqa: E731
    drop_last = len(train_ds) > cfg.batch_size  # BatchNorm cannot train on a batch of one
    train_dl = _loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers, drop_last=drop_last)
    # tiled validation images keep their own sizes: one per batch, its tiles batched by tiling.batch
    val_dl = _loader(val_ds, 1 if tiled else cfg.eval_batch_size or cfg.batch_size, shuffle=False, seed=cfg.seed,
                     num_workers=cfg.num_workers)

    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(len(train_dl), 1) * cfg.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    select = M.SELECTION_METRIC[task]
    # the best epoch (kept weights, early stopping): on the real sources' validation images with
    # select_on real (segment), else on the whole split (EpochSelector)
    selector = EpochSelector(select, mode=cfg.selection_mode() if task == "segment" else "all",
                             min_images=cfg.min_real_val_images, min_delta=cfg.min_delta, patience=cfg.patience,
                             min_epochs=cfg.min_epochs, tuned=task == "segment" and cfg.select_metric == "tuned_dice",
                             threshold=cfg.threshold)
    # An exponential moving average of the weights is what gets validated and kept: it smooths
    # the epoch-to-epoch jumps of a small-batch one-cycle run (validation Dice swung by 0.07).
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    scored = ema.module if ema is not None else module

    history: list[EpochLog] = []
    best_epoch, best_state, best_val, best_pixels = 0, None, {}, None
    stopped_early, seen = False, 0
    with Progress(f"train {MODEL_NAMES[task]}", cfg.epochs, unit="epoch", every=1, enabled=progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            module.train()
            total, count = 0.0, 0
            for x, y in bar.track(train_dl):
                x = x.to(dev, non_blocking=True, memory_format=torch.channels_last)
                y = y.to(dev, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                    loss = batch_loss(x, y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(module)
                total += float(loss.detach()) * len(x)
                count += len(x)
                bar.note(loss=total / count)
            seen += count
            # scored as it will be served: the best epoch and the threshold see the same views
            val_loss, val_metrics, val_pixels = validate(task, tta.wrap(scored, cfg.tta), val_dl, dev, criterion,
                                                         amp=amp, groups=val_groups, tiling=tiled,
                                                         low=cfg.threshold_low if task == "segment" else None)
            improved = selector.update(epoch, val_metrics, val_pixels)
            if improved:
                best_epoch, best_val, best_pixels = epoch, val_metrics, val_pixels
                best_state = copy.deepcopy(scored.state_dict())
            log = EpochLog(epoch, total / max(count, 1), val_loss, val_metrics, time.perf_counter() - t0,
                           optimizer.param_groups[0]["lr"], best=improved,
                           select=selector.logged())
            history.append(log)
            bar.advance(loss=log.train_loss, val_loss=val_loss, **{f"val_{select}": val_metrics[select]},
                        **selector.logged(), best=best_epoch)
            if on_epoch:
                on_epoch(log)
            if selector.stop(epoch):
                stopped_early = True
                break
    module.load_state_dict(best_state)
    module.eval()
    extra = {"threads": threads}
    if task == "segment":
        spec["select_on"] = selector.info()
        # The decision threshold ships in the spec (serving and evaluate read it): a fixed one,
        # or the one with the best validation Dice. Soft-Dice training leaves crack probabilities
        # poorly calibrated around 0.5, and thin cracks make Dice sensitive to a one-pixel rim.
        if cfg.threshold is not None:
            spec["threshold"] = float(cfg.threshold)
            spec["threshold_from"] = {"mode": "fixed"}
        else:  # the best epoch's validation pixels (per source), kept from its validation pass
            spec["threshold"], spec["threshold_from"] = select_threshold(best_pixels, cfg.threshold_from,
                                                                         min_images=cfg.min_real_val_images)
            # the whole validation split's Dice at the shipped threshold (MLflow: final_val_dice_at_threshold)
            extra["val_dice_at_threshold"] = dice_at(merge_counts(best_pixels.values()), spec["threshold"])
        if cfg.threshold_low is not None:  # hysteresis: the masks' faint stretches that join a confident one
            spec["threshold_low"] = float(cfg.threshold_low)
    return FitResult(module=module, spec=spec, history=history, best_epoch=best_epoch, best_val=best_val,
                     stopped_early=stopped_early, seconds=time.perf_counter() - start, device=str(dev),
                     train_images=seen, extra=extra)


THRESHOLD_RANGE = (0.2, 0.8)  # the tuned mask threshold stays inside this


def val_sources(splits: Splits) -> list[str]:
    """The source of each validation image, in order: ``synth`` for a synthetic one (its file is
    ``synth-<seed>-<index>``), else the tag of the real folder ``fissure data prepare`` took it from
    (:class:`fissure.training.slices.SourceIndex`: the prepared ``manifest.json``; a folder without
    one is a single real source named after the folder)."""
    from fissure.training.slices import SourceIndex

    index = SourceIndex(splits.roots.get("val") or next(iter(splits.roots.values())))
    return [index.source_of(item.image) for item in splits.val]


@dataclass
class SourcePixels(M.PixelCounts):
    """Validation pixel counts of one source, with its number of images."""

    images: int = 0


def merge_counts(counts) -> M.PixelCounts:
    counts = list(counts)
    total = M.PixelCounts(low=counts[0].low if counts else None)
    for c in counts:
        total.merge(c)
    return total


def dice_at(counts: M.PixelCounts, threshold: float) -> float:
    """Crack-pixel Dice of ``counts`` at ``threshold`` (a bin edge of its histogram); NaN
    without crack pixels (as :meth:`~fissure.training.metrics.PixelCounts.best_threshold`)."""
    if counts.pos_hist.sum() == 0:
        return float("nan")
    precision, recall, thresholds = counts.pr_curve()
    i = int(np.argmin(np.abs(thresholds - threshold)))
    p, r = float(precision[i]), float(recall[i])
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def validation_pool(by_source: dict, mode: str = "real", min_images: int = 0) -> tuple[dict, dict]:
    """The validation sources a segmenter's choice is made on (its mask threshold, its best epoch).

    ``by_source``: :class:`~fissure.training.metrics.PixelCounts` per source (``synth`` for the
    synthetic images), each with its ``images`` count. ``mode`` real: the real sources (all but
    ``synth``); the whole split instead when validation holds no real image, fewer than
    ``min_images`` real images (a handful must not decide), or no real crack pixel. ``mode`` all:
    the whole split. Returns (the chosen sources' counts, ``{"mode", "sources", "images"}``; in
    real mode, ``mode`` says what was used and ``fallback`` why the whole split was).
    """
    real = {name: c for name, c in by_source.items() if name != "synth"}
    info: dict = {"mode": mode}
    chosen = by_source
    if mode == "real":
        real_images = sum(getattr(c, "images", 0) for c in real.values())
        if not real:
            info["fallback"] = "no real-source validation images"
        elif real_images < min_images:
            info["fallback"] = (f"only {real_images} real-source validation images "
                                f"(min_real_val_images: {min_images})")
        elif sum(int(c.pos_hist.sum()) for c in real.values()) == 0:
            info["fallback"] = "the real-source validation images hold no crack pixels"
        else:
            chosen = real
        info["mode"] = "real" if chosen is real else "all"
    info.update(sources=sorted(chosen), images=sum(getattr(c, "images", 0) for c in chosen.values()))
    return chosen, info


def select_threshold(by_source: dict, mode: str = "real", low: float = THRESHOLD_RANGE[0],
                     high: float = THRESHOLD_RANGE[1], *, min_images: int = 0) -> tuple[float, dict]:
    """The mask threshold with the best crack-pixel Dice on validation pixels, and where it came from.

    ``by_source``, ``mode``, ``min_images``: which validation pixels, pooled (:func:`validation_pool`):
    ``mode`` real, the real sources' validation images (one threshold for the model, at the real
    images' Dice, the way the held-back real images are scored), else the whole split, synthetic
    images included. Returns (threshold, ``{"mode", "sources", "images", "dice"}``; ``fallback``
    says why the whole split was used in real mode; ``threshold_low`` that the Dice is of hysteresis
    masks from there, when the counts have one).
    """
    chosen, info = validation_pool(by_source, mode, min_images)
    pooled = merge_counts(chosen.values())
    threshold, dice = pooled.best_threshold(low, high)
    info["dice"] = None if np.isnan(dice) else round(float(dice), 4)
    if pooled.low is not None:
        info["threshold_low"] = pooled.low
    return threshold, info


class EpochSelector:
    """The best epoch (whose weights are kept) and early stopping, on one validation score.

    ``mode`` all: ``metric`` of the whole validation split, as :func:`validate` returns it (the
    segmenter's Dice at 0.5). ``mode`` real (the segmenter's ``select_on``): the crack-pixel Dice
    at 0.5 of the real sources' validation images pooled, decided at the first epoch by
    :func:`validation_pool` from its per-source pixel counts: the whole split when it falls back
    (no, too few, or crack-free real images) or when the counts are not per source. ``tuned``
    (``select_metric: tuned_dice``, per-source counts needed): instead of Dice at 0.5, the Dice the
    epoch would ship with: at ``threshold`` when fixed, else at the best threshold in
    :data:`THRESHOLD_RANGE` of the same pooled pixels. An epoch improves when its score beats the
    best by more than ``min_delta`` (the first always does); :meth:`stop` after ``patience`` epochs
    without, once ``min_epochs`` have run.
    """

    def __init__(self, metric: str, *, mode: str = "all", min_images: int = 0, min_delta: float = 0.0,
                 patience: int = 5, min_epochs: int = 0, tuned: bool = False, threshold: float | None = None):
        self.metric, self.mode, self.min_images = metric, mode, min_images
        self.min_delta, self.patience, self.min_epochs = min_delta, patience, min_epochs
        self.tuned, self.threshold = tuned, threshold
        self.pool: dict | None = None  # validation_pool's info, once seen
        self.on_real = False
        self.best_score, self.best_epoch, self.stale = -float("inf"), 0, 0
        self.last: float | None = None

    @property
    def name(self) -> str:
        """The score's name: ``metric`` (at 0.5), or ``tuned_dice``."""
        return "tuned_dice" if self.tuned and self.pool is not None else self.metric

    def score(self, metrics: dict, pixels=None) -> float:
        """The epoch's score: ``metrics[metric]``, or from ``pixels`` by source (real pool, tuned)."""
        if self.pool is None and isinstance(pixels, dict):
            chosen, self.pool = validation_pool(pixels, self.mode, self.min_images)
            self.on_real = self.pool["mode"] == "real"
            self._sources = set(chosen)
        if self.pool is not None and (self.on_real or self.tuned):
            counts = merge_counts(c for name, c in pixels.items() if name in self._sources)
            if self.tuned:
                value = (dice_at(counts, self.threshold) if self.threshold is not None
                         else counts.best_threshold(*THRESHOLD_RANGE)[1])
                return -float("inf") if np.isnan(value) else float(value)
            metrics = counts.metrics()
        value = metrics.get(self.metric)
        return -float("inf") if value is None else float(value)

    def update(self, epoch: int, metrics: dict, pixels=None) -> bool:
        """Score ``epoch``; True when it is the new best."""
        self.last = score = self.score(metrics, pixels)
        if score > self.best_score + self.min_delta or self.best_epoch == 0:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False

    def stop(self, epoch: int) -> bool:
        return self.stale >= self.patience and epoch >= self.min_epochs

    def logged(self) -> dict:
        """The last score under its per-epoch metric name (``val_real_dice``, ``val_tuned_dice``,
        ``val_real_tuned_dice``), or nothing when it is the whole split's ``val_<metric>``."""
        if self.last is None or not (self.on_real or self.name != self.metric):
            return {}
        return {f"val_{'real_' if self.on_real else ''}{self.name}": self.last if np.isfinite(self.last) else None}

    def info(self) -> dict:
        """What the best epoch was chosen on (the segmenter spec's ``select_on``): the pool's mode,
        sources, images and any fallback, the ``metric`` (dice: at 0.5; tuned_dice), the best
        ``epoch`` and its score (``dice``)."""
        pool = dict(self.pool or {"mode": "all"})
        best = None if self.best_epoch == 0 or not np.isfinite(self.best_score) else round(self.best_score, 4)
        return {**pool, "metric": self.name, "epoch": self.best_epoch, "dice": best}


def _tiled_probabilities(module, x: torch.Tensor, tiling, dev, amp: bool) -> torch.Tensor:
    """Crack probabilities [N, 1, H, W] of normalised images [N, 3, H, W] in blended tiles
    (the served path; the images are normalised already, so no preprocess config)."""
    with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
        return torch.stack([segment_probabilities(module, image, None, tiling, device=dev)[0][None] for image in x])


@torch.no_grad()
def validate(task, module, loader, dev, criterion, *, amp=False, groups: list[str] | None = None, tiling=None,
             low: float | None = None):
    """(mean loss, metrics, pixel counts) on a loader at the model's size, or with ``tiling``
    (segment, tile mode) at the images' own size in blended tiles; the
    :class:`~fissure.training.metrics.PixelCounts` are None for classification. With ``groups``
    (a name per image of the loader, in its order: it must not shuffle) the segmentation pixel
    counts are a dict of them by name (each with its ``images`` count), the metrics the pooled ones.
    ``low``: the hysteresis low threshold of the model's masks, so that the counts' threshold sweep
    (the tuned threshold, the best epoch) is of the masks it will serve."""
    module.eval()
    total, count = 0.0, 0
    if task == "segment":
        by_group: dict[str, SourcePixels] = {}
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            if tiling is not None:  # the loss of the blended map, as logits
                probs = _tiled_probabilities(module, x, tiling, dev, amp)
                logits = torch.logit(probs, eps=1e-6)
            else:
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                    logits = module(x)
            total += float(criterion(logits, y)) * len(x)
            probs = torch.sigmoid(logits.float())
            names = groups[count : count + len(x)] if groups is not None else ["all"] * len(x)
            for name in dict.fromkeys(names):
                rows = [i for i, n in enumerate(names) if n == name]
                by_group.setdefault(name, SourcePixels(low=low))
                by_group[name].update(probs[rows], y[rows])
                by_group[name].images += len(rows)
            count += len(x)
        pixels = merge_counts(by_group.values())
        return total / max(count, 1), pixels.metrics(), (by_group if groups is not None else pixels)
    labels, probs = [], []
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            logits = module(x)
        total += float(criterion(logits, y)) * len(x)
        count += len(x)
        labels.append(y.cpu().numpy())
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return total / max(count, 1), M.classification_metrics(np.concatenate(labels), np.concatenate(probs)), None


def quiet_determinism_warnings():
    warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
