"""Native-resolution tiling (fissure.models.tiling): exact, seam-free, at the original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fissure.errors import ConfigError
from fissure.models import default_spec
from fissure.models.tiling import (TilingConfig, blend_window, describe, grid_shape, predict_grid, predict_map,
                                   segment_probabilities, tile_positions, tiling_config, working_size)
from fissure.preprocess import PreprocessConfig, normalize

PCFG = PreprocessConfig(size=64)


class Pointwise(nn.Module):
    """A per-pixel model: its map of a tile is the map of the whole image, cropped."""

    def forward(self, x):
        return x[:, :1] * 0.7 - x[:, 1:2] * 0.2 + 0.1


class Blur(nn.Module):
    """A 9x9 mean with zero padding: its values sag near every tile edge (a model's lost context)."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x[:, :1], 9, stride=1, padding=4, count_include_pad=True)


def _pixels(h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("h,w", [(517, 263), (64, 64), (40, 130), (1, 1), (700, 1000)])
def test_pointwise_model_tiled_equals_whole_at_every_original_pixel(h, w):
    pixels = _pixels(h, w)
    cfg = TilingConfig(mode="tile", tile=64, overlap=16, batch=5)
    tiled, n = predict_map(Pointwise(), pixels, PCFG, cfg)
    whole = Pointwise()(normalize(pixels[None], PCFG))[0]
    assert tiled.shape == (1, h, w)
    assert n == len(tile_positions(h, 64, 48)) * len(tile_positions(w, 64, 48))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_tiles_cover_the_image_and_the_last_is_flush():
    assert tile_positions(100, 64, 48) == [0, 36]
    assert tile_positions(64, 64, 48) == [0]
    assert tile_positions(10, 64, 48) == [0]
    starts = tile_positions(1000, 256, 224)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 224 for a, b in zip(starts, starts[1:]))
    assert grid_shape(700, 1000, TilingConfig(mode="tile", tile=256, overlap=32)) == (3, 5)


def test_blending_leaves_no_seams_where_hard_stitching_does():
    """A constant image through a model that sags at tile edges: blended, the map stays flat
    inside the image; stitched without overlap, every tile edge shows as a line."""
    image = torch.ones(3, 300, 300)
    pcfg = PreprocessConfig(size=64)

    def inner(cfg):
        out, _ = predict_map(Blur(), image, pcfg, cfg)
        return out[0, 4:-4, 4:-4]  # the image's own border sags in any tiling

    blended = inner(TilingConfig(mode="tile", tile=64, overlap=24))
    stitched = inner(TilingConfig(mode="tile", tile=64, overlap=0))
    assert float((blended - 1).abs().max()) < 0.02
    assert float((stitched - 1).abs().max()) > 0.3


def test_window_is_positive_and_one_inside():
    w = blend_window(64, 16)
    assert float(w.min()) > 0
    assert float(w[16:48, 16:48].min()) == 1.0
    torch.testing.assert_close(w, w.flip(0).flip(1))
    assert float(blend_window(64, 0).min()) == 1.0


def test_budget_downscales_first_and_maps_back_to_the_original_size():
    cfg = TilingConfig(mode="tile", tile=32, overlap=8, max_pixels=10_000)
    assert working_size(200, 300, cfg) == (81, 122)
    assert working_size(100, 100, cfg) == (100, 100)
    small = _pixels(81, 122).permute(2, 0, 1).float()  # a float tensor works as uint8 pixels do
    prob, n = segment_probabilities(Pointwise(), small, PCFG, cfg, out_size=(200, 300))
    assert prob.shape == (200, 300) and n == grid_shape(81, 122, cfg)[0] * grid_shape(81, 122, cfg)[1]
    info = describe(cfg, (200, 300), (81, 122), n)
    assert info["scale"] == pytest.approx(81 / 200, abs=1e-6)
    assert info["downscaled_to"] == [81, 122] and "10 MP" not in info["note"] and "0.01 MP" in info["note"]
    assert "downscaled_to" not in describe(cfg, (100, 100), (100, 100), 9)


def test_classifier_grid_has_one_row_of_probabilities_per_tile():
    class TwoClass(nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, -m], 1).softmax(1)

    cfg = TilingConfig(mode="tile", tile=32, overlap=8, batch=3)
    grid = predict_grid(TwoClass(), _pixels(70, 100), PCFG, cfg)
    assert grid.shape == (*grid_shape(70, 100, cfg), 2) == (3, 4, 2)
    torch.testing.assert_close(grid.sum(-1), torch.ones(3, 4))


def test_spec_defaults_to_resize_and_reads_tile_settings():
    spec = default_spec("segment", size=64)
    assert not tiling_config(spec).tiles
    assert tiling_config(spec, native=True).tile == 64
    spec["tiling"] = {"mode": "tile", "overlap": 8}
    cfg = tiling_config(spec)
    assert cfg.tiles and cfg.tile == 64 and cfg.stride == 56
    assert not tiling_config(spec, native=False).tiles
    spec["tiling"] = {"mode": "tile", "overlap": 64}
    with pytest.raises(ConfigError, match="overlap 64 must be smaller"):
        tiling_config(spec)
    spec["tiling"] = {"mode": "slices"}
    with pytest.raises(ConfigError, match="tiling.mode"):
        tiling_config(spec)


def test_small_models_load_with_the_default_overlap():
    """A 32-pixel model without tiling in its spec (the test pipeline's) must load and resize."""
    spec = default_spec("classify", size=32)
    cfg = tiling_config(spec)
    assert not cfg.tiles and cfg.tile == 32 and cfg.overlap == 8
    assert tiling_config(default_spec("segment")).overlap == 32
