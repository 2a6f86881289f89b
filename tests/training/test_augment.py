"""Training augmentation: the contrast range of params.yaml's `contrast` is what the model sees."""

from __future__ import annotations

import numpy as np
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


def _line_item(tmp_path, width: int = 2):
    """One 128 px image: a grey surface crossed by a dark vertical line ``width`` px wide."""
    from PIL import Image

    from fissure.data import loaders

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.full((128, 128, 3), 180, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    img[:, 60 : 60 + width] = 40
    mask[:, 60 : 60 + width] = 255
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    return loaders.segmentation_items(tmp_path)


@pytest.mark.parametrize("scale, width", [((2.0, 2.0), 4), ((0.5, 0.5), 16), ((1.0, 1.0), 8)])
def test_scale_shows_cracks_thinner_or_wider(tmp_path, scale, width):
    """A window of crop x s is resized to the crop: an 8 px crack is 4 px wide at s = 2 and 16 px
    at s = 0.5, in the image and in the mask alike (the mask by area: each row holds exactly the
    crack's width in crack pixels, fractional where it straddles one)."""
    from fissure.training.datasets import SegmentationDataset

    items = _line_item(tmp_path, width=8)
    ds = SegmentationDataset(items, PreprocessConfig(size=128), crop=32, augment=True, crack_bias=1.0, scale=scale)
    ds.augment = False  # the window and its resize only: no flips, turns or jitter
    whole = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
        cols = y[0].amax(0) > 0
        if cols[0] or cols[-1]:  # the window cut the line
            continue
        whole += 1
        assert torch.allclose(y[0].sum(1), torch.full((32,), float(width)), atol=1e-4)
        assert y[0, :, int(x.mean((0, 1)).argmin())].min() > 0.4  # the darkest column is crack
    assert whole >= 3


def test_a_thin_crack_survives_shrinking(tmp_path):
    from fissure.training.datasets import SegmentationDataset

    ds = SegmentationDataset(_line_item(tmp_path, width=1), PreprocessConfig(size=128), crop=32, augment=True,
                             crack_bias=1.0, scale=(4.0, 4.0))
    ds.augment = False
    torch.manual_seed(0)
    _, y = ds[0]
    # a 1 px line shrunk 4x is a quarter-crack line in every row: faint, as in the image
    assert torch.allclose(y[0].sum(1), torch.full((32,), 0.25), atol=1e-4)
