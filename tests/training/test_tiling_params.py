"""params.yaml's ``train_segmenter.tiling`` reaches the saved model's spec (native-resolution
serving and `fissure evaluate`), and a bad value there is one line naming the key."""

from __future__ import annotations

import pytest

from fissure.errors import DataError
from fissure.models import io
from fissure.models.tiling import tiling_config
from fissure.training.config import load_config
from fissure.training.run import train

from .conftest import tiny_config


def test_tiling_from_params_is_saved_in_the_spec(seg_data, tmp_path):
    cfg = tiny_config("segment", epochs=1, tiling={"mode": "tile", "overlap": 16, "max_pixels": 4_000_000})
    train("segment", seg_data, cfg, out=tmp_path / "seg", progress=False, echo=lambda m: None)
    spec = io.load_model(str(tmp_path / "seg" / "model")).spec
    tiling = tiling_config(spec)
    assert tiling.tiles and (tiling.tile, tiling.overlap, tiling.max_pixels) == (64, 16, 4_000_000)


def test_without_tiling_the_spec_says_resize(seg_data, tmp_path):
    train("segment", seg_data, tiny_config("segment", epochs=1), out=tmp_path / "seg", progress=False,
          echo=lambda m: None)
    spec = io.load_model(str(tmp_path / "seg" / "model")).spec
    assert "tiling" not in spec and not tiling_config(spec).tiles


@pytest.mark.parametrize("value, message", [
    ("{mode: tiles}", "train_segmenter: tiling.mode: Input should be 'resize' or 'tile'"),
    ("{mode: tile, max_pixels: 0}", "train_segmenter: tiling.max_pixels: Input should be greater than 0"),
    ("{mode: tile, overlap: 256}", "train_segmenter: tiling: overlap 256 must be smaller than the tile (256)"),
    ("{mode: tile, tiles: 3}", "train_segmenter: tiling.tiles: Extra inputs are not permitted"),
])
def test_bad_tiling_in_params_is_one_line(tmp_path, value, message):
    params = tmp_path / "params.yaml"
    params.write_text(f"train_segmenter:\n  size: 256\n  tiling: {value}\n")
    with pytest.raises(DataError) as err:
        load_config("segment", params)
    assert str(err.value) == f"{params}: {message}"
