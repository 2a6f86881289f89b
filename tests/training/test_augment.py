"""Training augmentation: the contrast range of params.yaml's `contrast` is what the model sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fissure.preprocess import PreprocessConfig, normalize
from fissure.training.datasets import SegmentationDataset, augment

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


def _depth(pixels: np.ndarray, y: torch.Tensor) -> float:
    """How much darker the crack is than the surface (grey levels)."""
    grey, crack = pixels.astype(float).mean(2), y[0].numpy() > 0.5
    return float(grey[~crack].mean() - grey[crack].mean())


@pytest.mark.parametrize("keep", [0.0, 0.25, 0.7])
def test_fade_keeps_that_share_of_the_crack_depth(keep):
    """A faded crack keeps ``keep`` of its depth below the surface around it; pixels out of a
    crack's reach are left alone, and on a textured surface the texture stays."""
    from fissure.training.datasets import fade_cracks

    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(170, 12, (64, 64, 3)), 0, 255).astype(np.uint8)  # a textured surface
    pixels[:, 30:33] = 40
    y = torch.zeros(1, 64, 64)
    y[0, :, 30:33] = 1.0
    out = fade_cracks(pixels, y, keep)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    assert _depth(out, y) == pytest.approx(keep * _depth(pixels, y), abs=3.0)
    assert np.array_equal(out[:, :26], pixels[:, :26]) and np.array_equal(out[:, 37:], pixels[:, 37:])


def test_fade_without_surface_in_reach_uses_the_whole_surface():
    """A crack wider than the averaging window fades toward the mean of the image's surface."""
    from fissure.training.datasets import FADE_WINDOW, fade_cracks

    side = 4 * FADE_WINDOW
    pixels = np.full((side, side, 3), 200, np.uint8)
    pixels[:, 10 : 10 + 2 * FADE_WINDOW] = 0
    y = torch.zeros(1, side, side)
    y[0, :, 10 : 10 + 2 * FADE_WINDOW] = 1.0
    out = fade_cracks(pixels, y, 0.5)
    assert abs(int(out[side // 2, 10 + FADE_WINDOW, 0]) - 100) <= 1


def test_fade_in_training_crops(tmp_path):
    """With ``fade`` about half the crops holding a crack show it faded to the drawn share of its
    depth; the mask never changes; without augmentation nothing fades."""
    from fissure.training.datasets import SegmentationDataset

    items = _line_item(tmp_path, width=3)
    ds = SegmentationDataset(items, PreprocessConfig(size=128), crop=32, augment=True, crack_bias=1.0, fade=(0.3, 0.3))
    ds.augment = False  # the crop and the fade only
    cfg = ds.cfg
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    depths = []
    for seed in range(40):
        torch.manual_seed(seed)
        x, y = ds[0]
        assert torch.equal(y[0].sum(1), torch.full((32,), 3.0)) or y[0].amax(0)[[0, -1]].any()
        pixels = ((x * std + mean) * 255).permute(1, 2, 0).numpy()
        depths.append(_depth(pixels, y))
    faded = [d for d in depths if d < 0.5 * 140]
    assert 10 <= len(faded) <= 30, depths
    assert all(abs(d - 0.3 * 140) < 6 for d in faded), depths
    assert all(abs(d - 140) < 6 for d in depths if d >= 0.5 * 140)
    plain = SegmentationDataset(items, PreprocessConfig(size=128), crop=32, augment=False, fade=(0.3, 0.3))
    assert plain.fade == (1.0, 1.0)


def test_fade_in_crack_patches(tmp_path):
    """The classifier's crack patches fade through the mask tile `fissure data prepare` wrote beside
    them; patches without one (no_crack, feedback images) are never changed."""
    from PIL import Image

    from fissure.data.loaders import classification_set
    from fissure.data.loaders import PATCH_MASKS as MASKS
    from fissure.training.datasets import ClassificationDataset

    pixels = np.full((32, 32, 3), 180, np.uint8)
    pixels[:, 14:17] = 40
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 14:17] = 255
    for folder in ("crack", "no_crack", f"{MASKS}/crack"):
        (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "crack" / "a.png")
    Image.fromarray(mask).save(tmp_path / MASKS / "crack" / "a.png")
    Image.fromarray(pixels).save(tmp_path / "crack" / "unmasked.png")
    Image.fromarray(pixels).save(tmp_path / "no_crack" / "b.png")
    cset = classification_set(tmp_path)
    assert cset.classes == ["no_crack", "crack"] and len(cset.items) == 3  # .masks is no class
    cfg = PreprocessConfig(size=32)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    ds = ClassificationDataset(cset.items, cfg, augment=True, fade=(0.25, 0.25))
    ds.augment = False  # the fade only
    y = torch.from_numpy(mask > 0).float()[None]
    for i, (path, _) in enumerate(cset.items):
        depths = []
        for seed in range(30):
            torch.manual_seed(seed)
            x, _ = ds[i]
            depths.append(_depth(((x * std + mean) * 255).permute(1, 2, 0).numpy(), y))
        faded = [d for d in depths if d < 70]
        if path.name == "a.png":
            assert 7 <= len(faded) <= 23 and all(abs(d - 35) < 4 for d in faded), depths
        else:
            assert not faded


def test_gray_std_stretches_the_whole_image_before_the_crop(tmp_path):
    """Training sees what serving sees: the image stretched at model size, then cropped (a crop's
    own spread would differ from the whole image's)."""
    from fissure.preprocess import image_to_array, load_image, stretch_contrast

    items = _line_item(tmp_path, width=2)
    cfg = PreprocessConfig(size=128, gray_std=24.0)
    whole = stretch_contrast(image_to_array(load_image(items[0].image), cfg, stretch=False), 24.0)
    assert set(np.unique(whole)) != {40, 180}  # the stretch changed the pixels
    ds = SegmentationDataset(items, cfg, crop=32, augment=False, crack_bias=1.0)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    for _ in range(5):
        x, _ = ds[0]
        crop = ((x * std + mean) * 255.0).round().to(torch.int64).unique().tolist()
        assert set(crop) <= set(np.unique(whole).tolist()), crop


def _flat_with_a_line() -> torch.Tensor:
    pixels = torch.full((1, 32, 32, 3), 128, dtype=torch.uint8)
    pixels[0, :, 15] = 64
    return normalize(pixels, CFG)[0]


def _raw(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(CFG.std).view(3, 1, 1) + torch.tensor(CFG.mean).view(3, 1, 1)


def test_grain_is_drawn_up_to_noise_on_about_half_the_images_and_off_by_default():
    from fissure.training.datasets import DEGRADE_SHARE

    torch.manual_seed(2)
    x = normalize(torch.full((1, 32, 32, 3), 128, dtype=torch.uint8), CFG)[0]
    # a flat surface's spread is the grain alone (contrast factor 1)
    spreads = [float(_raw(augment(x, None, CFG, (1.0, 1.0), noise=12.0)[0]).std()) * 255 for _ in range(200)]
    grainy = [s for s in spreads if s > 0.05]
    assert abs(len(grainy) / len(spreads) - DEGRADE_SHARE) < 0.12
    assert max(grainy) <= 12.0 * 1.15 and max(grainy) > 8  # drawn over the range, capped by noise
    off = [float(_raw(augment(x, None, CFG, (1.0, 1.0))[0]).std()) * 255 for _ in range(40)]
    assert max(off) < 0.05


def test_blur_softens_a_line_and_keeps_its_mask_and_mean():
    from fissure.training.datasets import gaussian_blur

    x = _flat_with_a_line()
    raw = _raw(x)
    soft = gaussian_blur(raw, 1.5)
    assert torch.allclose(soft.mean(), raw.mean(), atol=1e-4)  # a blur moves no brightness
    depth = lambda r: float(r[0, 10, 0] - r[0, 10, 15])  # noqa: E731  surface minus line centre
    assert depth(soft) < 0.5 * depth(raw)
    assert soft[0, 10, 14] < raw[0, 10, 14]  # the line spreads to its neighbours
    torch.manual_seed(3)
    mask = torch.zeros(1, 32, 32)
    mask[0, :, 15] = 1.0
    for _ in range(10):  # the target stays the crack's own pixels, turned with the image
        out, y = augment(x, mask.clone(), CFG, (1.0, 1.0), blur=2.0)
        assert y.sum() == 32
        darkest = _raw(out).mean(0).flatten().argsort()[:32]
        assert bool(y.flatten()[darkest].all())


def test_blur_and_noise_limits_are_checked():
    from pydantic import ValidationError

    from fissure.training.config import TrainConfig

    assert (TrainConfig().blur, TrainConfig().noise) == (0.0, 0.0)
    for bad in ({"blur": -1}, {"noise": 300}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)
