"""Training augmentation: the contrast range of params.yaml's `contrast` is what the model sees."""

from __future__ import annotations

import pytest
import torch

from fissure.preprocess import PreprocessConfig, normalize
from fissure.training.datasets import augment

CFG = PreprocessConfig(size=32)


def _raw_std(x: torch.Tensor) -> float:
    """The image's spread on the 0-1 pixel scale (what the contrast factor multiplies)."""
    mean = torch.tensor(CFG.mean).view(3, 1, 1)
    std = torch.tensor(CFG.std).view(3, 1, 1)
    return float((x * std + mean).std())


@pytest.mark.parametrize("contrast", [(0.25, 0.25), (0.75, 1.25), (0.3, 0.6)])
def test_contrast_factor_stays_in_the_range(contrast):
    torch.manual_seed(0)
    # a grey surface with a darker line: mid-range values, so brightness shifts never clip
    pixels = torch.full((1, 32, 32, 3), 128, dtype=torch.uint8)
    pixels[0, :, 14:17] = 96
    x = normalize(pixels, CFG)[0]
    before = _raw_std(x)
    ratios = [_raw_std(augment(x, None, CFG, contrast)[0]) / before for _ in range(60)]
    jittered = [r for r in ratios if abs(r - 1.0) > 1e-4]
    assert len(jittered) >= 30  # 80 % of draws change the contrast
    low, high = contrast
    assert all(low - 1e-3 <= r <= high + 1e-3 for r in jittered), ratios
    if low < high:  # the factor is drawn, not fixed
        assert max(jittered) - min(jittered) > (high - low) / 3


def test_the_mask_follows_flips_and_turns():
    torch.manual_seed(1)
    pixels = torch.full((1, 32, 32, 3), 200, dtype=torch.uint8)
    pixels[0, 3:6, 20:29] = 20
    mask = torch.zeros(1, 32, 32)
    mask[0, 3:6, 20:29] = 1.0
    for _ in range(20):
        x, y = augment(normalize(pixels, CFG)[0], mask.clone(), CFG, (1.0, 1.0))
        dark = x.mean(0) < x.mean()
        assert torch.equal(dark, y[0] > 0.5)
