"""A segmenter served in native-resolution tiles (``tiling: {mode: tile}``) trains on crops of the
images at their own size and is validated in tiles, the way it will be served."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.data import loaders
from fissure.models import default_spec, preprocess_config, tiling_config
from fissure.models.tiling import TilingConfig
from fissure.training.datasets import SegmentationDataset, find_splits
from fissure.training.evaluate import evaluate_segmenter
from fissure.training.loop import fit

from .conftest import tiny_config, write_segment_set

PCFG = preprocess_config(default_spec("segment", size=32))
TILES = TilingConfig(mode="tile", tile=32, overlap=8)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """96 px images: three times the 32 px model input, so tiles and crops differ from resizing."""
    root = tmp_path_factory.mktemp("native")
    write_segment_set(root / "train", 16, size=96, seed=1)
    write_segment_set(root / "val", 6, size=96, seed=2)
    return root


def _items(root, split):
    return getattr(find_splits("segment", root), split)


def test_items_keep_the_images_own_size_in_tile_mode(large):
    items = _items(large, "train")[:3]
    native = SegmentationDataset(items, PCFG, tiling=TILES)
    resized = SegmentationDataset(items, PCFG)
    for i in range(3):
        x, y = native[i]
        assert x.shape == (3, 96, 96) and y.shape == (1, 96, 96)
        assert resized[i][0].shape == (3, 32, 32)
    # resize mode in the tiling config is the resized dataset
    assert SegmentationDataset(items, PCFG, tiling=TilingConfig(mode="resize", tile=32, overlap=8))[0][0].shape == (3, 32, 32)


def test_crops_are_windows_of_the_native_image_and_mask(large):
    items = [it for it in _items(large, "train") if (np.asarray(Image.open(it.mask)) > 0).any()][:2]
    full = SegmentationDataset(items, PCFG, tiling=TILES)
    cropped = SegmentationDataset(items, PCFG, crop=32, crack_bias=1.0, tiling=TILES)
    for i in range(len(items)):
        x, y = full[i]
        torch.manual_seed(i)
        cx, cy = cropped[i]
        assert cx.shape == (3, 32, 32) and cy.shape == (1, 32, 32)
        assert cy.sum() > 0  # crack_bias 1: the crop holds crack pixels
        # the crop is the same pixels at the same scale (no resize), with its mask aligned
        hits = [(t, l) for t in range(65) for l in range(65) if torch.equal(x[:, t:t + 32, l:l + 32], cx)]
        assert hits and all(torch.equal(y[:, t:t + 32, l:l + 32], cy) for t, l in hits)


def test_images_smaller_than_the_crop_are_padded_with_background(tmp_path):
    root = write_segment_set(tmp_path / "small", 2, size=20)
    ds = SegmentationDataset(loaders.segmentation_items(root), PCFG, crop=32, tiling=TILES)
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
    assert float(y[:, 20:, :].sum()) == 0.0 and float(y[:, :, 20:].sum()) == 0.0
    # edge pixels continue the image (no black border a model could learn)
    assert torch.equal(x[:, 25, :20], x[:, 19, :20])


def test_images_over_the_pixel_budget_are_downscaled_with_their_masks(large):
    budget = TilingConfig(mode="tile", tile=32, overlap=8, max_pixels=48 * 48)
    x, y = SegmentationDataset(_items(large, "train")[:1], PCFG, tiling=budget)[0]
    assert x.shape == (3, 48, 48) and y.shape == (1, 48, 48)
    assert set(y.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_tiled_segmenter_is_validated_as_it_is_served(large):
    """Validation in tile mode is the served path: the best epoch's validation Dice at 0.5 is
    what `fissure evaluate` (tiles, native masks) measures on the same images with the returned
    weights; the spec carries the tiling and the training crops were native ones."""
    cfg = tiny_config("segment", size=32, crop=0, epochs=3, min_epochs=3, tiling={"mode": "tile", "overlap": 8})
    splits = find_splits("segment", large)
    result = fit("segment", splits, cfg, progress=False)
    tiling = tiling_config(result.spec)
    assert tiling.tiles and (tiling.tile, tiling.overlap) == (32, 8)
    served = evaluate_segmenter(result.module, result.spec, splits.val, overlays=0, threshold=0.5, tiling=tiling)
    assert result.best_val["dice"] == pytest.approx(served.metrics["dice"], abs=1e-6)
    resized = evaluate_segmenter(result.module, result.spec, splits.val, overlays=0, threshold=0.5,
                                 tiling=tiling.model_copy(update={"mode": "resize"}))
    assert resized.metrics["dice"] != pytest.approx(served.metrics["dice"], abs=1e-6)
