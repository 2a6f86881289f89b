"""Tiny, easy datasets for training tests: a dark line on a noisy bright surface.

Easy on purpose: the tests check that the loop learns, reproduces and logs, not model quality
(that is measured on the pipeline's synthetic data and on real data in docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fissure.training.config import TrainConfig


def _surface(rng, size):
    base = rng.uniform(150, 210)
    img = base + rng.normal(0, 10, (size, size, 1)) + rng.normal(0, 4, (size, size, 3))
    return img


def _line(rng, size, width):
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    pts = [(float(rng.uniform(0, size)), 0.0)]
    for y in np.linspace(size / 4, size, 4):
        pts.append((float(np.clip(pts[-1][0] + rng.normal(0, size / 6), 0, size - 1)), float(y)))
    if rng.random() < 0.5:  # horizontal
        pts = [(y, x) for x, y in pts]
    draw.line(pts, fill=255, width=width)
    return np.asarray(canvas) > 0


def write_segment_set(root: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = _surface(rng, size)
        mask = _line(rng, size, width=int(rng.integers(3, 6))) if i % 4 else np.zeros((size, size), bool)
        img[mask] = rng.uniform(30, 70)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"s{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"s{i:03d}.png")
    return root


def write_classify_set(root: Path, count: int, size: int = 32, seed: int = 0, crack_share: float = 0.5) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("crack", "no_crack"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = _surface(rng, size)
        crack = rng.random() < crack_share
        if crack:
            img[_line(rng, size, width=int(rng.integers(2, 4)))] = rng.uniform(30, 70)
        name = "crack" if crack else "no_crack"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"c{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    write_segment_set(root / "train", 24, seed=1)
    write_segment_set(root / "val", 8, seed=2)
    write_segment_set(root / "test", 8, seed=3)
    return root


@pytest.fixture(scope="session")
def clf_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clf")
    write_classify_set(root / "train", 96, seed=1, crack_share=0.35)  # imbalanced on purpose
    write_classify_set(root / "val", 32, seed=2)
    write_classify_set(root / "test", 32, seed=3)
    return root


def tiny_config(task: str, **kw) -> TrainConfig:
    if task == "segment":
        base = dict(epochs=4, batch_size=4, lr=1e-2, patience=10, size=64, crop=32, eval_batch_size=8,
                    crack_bias=0.5, model={"base": 4, "depth": 2, "norm": "group"}, threads=1)
    else:
        base = dict(epochs=4, batch_size=16, lr=1e-2, patience=10, size=32, model={"width": 8, "blocks": 1, "dropout": 0.0},
                    threads=1)
    base.update(kw)
    return TrainConfig(**base)
