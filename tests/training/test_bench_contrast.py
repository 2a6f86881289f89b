"""training/bench_contrast.py: the contrast changes it scores a model under, and its CLI errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "bench_contrast.py"
spec = importlib.util.spec_from_file_location("bench_contrast", SCRIPT)
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)


def _surface(spread=8.0, seed=0) -> np.ndarray:
    grey = np.random.default_rng(seed).normal(120.0, spread, (64, 96))
    return np.clip(np.stack([grey, grey + 5, grey - 5], axis=-1), 0, 255).round().astype(np.uint8)


def test_as_is_keeps_the_pixels_and_a_factor_scales_the_spread_about_the_mean():
    px = _surface()
    assert (bc.change(px, "as-is") == px).all()
    doubled = bc.change(px, "x2")
    assert bc.gray_spread(doubled) == pytest.approx(2 * bc.gray_spread(px), rel=0.02)
    assert np.allclose(doubled.mean(axis=(0, 1)), px.mean(axis=(0, 1)), atol=0.6)


def test_std_variants_reach_their_spread_and_equalize_spreads_the_histogram():
    px = _surface(spread=6.0)
    assert bc.gray_spread(bc.change(px, "std24")) == pytest.approx(24.0, rel=0.03)
    assert bc.gray_spread(bc.change(px, "equalize")) > 4 * bc.gray_spread(px)


def test_a_changed_copy_keeps_names_and_links_the_masks(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    Image.fromarray(_surface()).save(src / "images" / "a.jpg")
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(src / "masks" / "a.png")
    out = bc.changed_copy(src, tmp_path / "x2", "x2")
    assert [p.name for p in (out / "images").iterdir()] == ["a.png"]
    assert (out / "masks").resolve() == (src / "masks").resolve()


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "m", "--variant", "x"], "--variant x: expected as-is, equalize, xK"),
    (["--model", "m", "--data", "nowhere"], "--data nowhere: needs nowhere/images and nowhere/masks"),
])
def test_bad_arguments_exit_with_one_line(tmp_path, argv, message):
    done = subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == message or done.stderr.strip().startswith(message)
    assert "Traceback" not in done.stderr
