"""Classification patches cut from segmentation sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fissure.data.loaders import segmentation_items
from fissure.data.patches import PatchSpec, extract_patches, label_tile, tile_origins
from fissure.data.synth import write_dataset
from fissure.errors import DataError
from fissure.preprocess import load_mask


def test_tile_origins():
    assert tile_origins(100, 200, 96, 96) == [(0, 0), (0, 96)]
    assert tile_origins(50, 200, 96, 96) == []


def test_label_rules():
    spec = PatchSpec(size=32, stride=32, threshold=0.02, margin=4)
    mask = np.zeros((64, 96), bool)
    mask[10, 2:30] = True          # a 28-px crack inside tile (0, 0)
    mask[10:12, 66] = True         # 2 stray pixels in tile (0, 64): too short
    mask[40, 30] = True            # one pixel just left of tile (32, 32): in its margin
    assert label_tile(mask, 0, 0, spec) == "crack"
    assert label_tile(mask, 0, 64, spec) is None
    assert label_tile(mask, 32, 32, spec) is None
    assert label_tile(mask, 32, 64, spec) == "no_crack"


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    write_dataset(root, "segment", 12, seed=1, size=192)
    return root


def test_patches_match_masks(seg_set, tmp_path):
    spec = PatchSpec(size=64, stride=64, threshold=0.01, margin=4)
    counts = extract_patches(seg_set, tmp_path, spec)
    assert counts["crack"] == counts["no_crack"] > 5
    for label in ("crack", "no_crack"):
        files = sorted((tmp_path / label).glob("*.jpg"))
        assert len(files) == counts[label]
        assert len(list((tmp_path / ".masks" / label).glob("*.png"))) == (counts[label] if label == "crack" else 0)
        for f in files:
            stem, y, x = re.fullmatch(r"(.+)_y(\d+)_x(\d+)", f.stem).groups()
            y, x = int(y), int(x)
            mask = load_mask(seg_set / "masks" / f"{stem}.png")
            tile = mask[y:y + 64, x:x + 64]
            if label == "crack":
                assert tile.mean() >= 0.01
                # its mask tile beside, for training to fade the crack it shows
                assert np.array_equal(load_mask(tmp_path / ".masks" / "crack" / f"{f.stem}.png"), tile)
            else:
                assert not mask[max(0, y - 4):y + 68, max(0, x - 4):x + 68].any()
            with Image.open(f) as im:
                assert im.size == (64, 64)


def test_patches_deterministic_and_unbalanced(seg_set, tmp_path):
    spec = PatchSpec(size=64, stride=64, seed=3)
    a = extract_patches(seg_set, tmp_path / "a", spec)
    b = extract_patches(seg_set, tmp_path / "b", spec)
    assert a == b
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))  # noqa: E731
    assert names(tmp_path / "a") == names(tmp_path / "b")
    raw = extract_patches(seg_set, tmp_path / "raw", PatchSpec(size=64, stride=64, balance=False))
    assert raw["no_crack"] >= a["no_crack"] and raw["crack"] >= a["crack"]


def test_patch_size_larger_than_images(seg_set, tmp_path):
    with pytest.raises(DataError, match="smaller than the patch size"):
        extract_patches(seg_set, tmp_path, PatchSpec(size=400, stride=400))


def _subset(root: Path, n: int):
    return segmentation_items(root)[:n]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["deepcrack/train", "crackforest/all"])
def test_patches_on_real_data(shared_datasets, tmp_path, name):
    items = _subset(shared_datasets / name, 15)
    counts = extract_patches(items, tmp_path, PatchSpec(size=96, stride=96))
    assert counts["crack"] == counts["no_crack"] > 5
    for f in list((tmp_path / "crack").glob("*.jpg"))[:20]:
        stem, y, x = re.fullmatch(r"(.+)_y(\d+)_x(\d+)", f.stem).groups()
        item = next(i for i in items if i.image.stem == stem)
        assert load_mask(item.mask)[int(y):int(y) + 96, int(x):int(x) + 96].mean() >= 0.01


@pytest.mark.parametrize("enabled", [True, None])
def test_progress_lines_in_a_log_when_enabled(seg_set, tmp_path, capsys, enabled):
    """Plain lines where stderr is not a terminal (a log, dvc repro) with progress=True; None
    keeps quiet there (a bar on a terminal only)."""
    extract_patches(seg_set, tmp_path, PatchSpec(size=64, stride=64), progress=enabled)
    err = capsys.readouterr().err
    label = re.findall(r"^label tiles: images (\d+)/12 elapsed \S+ eta \S+$", err, re.M)
    write = re.findall(r"^write patches: images (\d+)/(\d+) elapsed \S+", err, re.M)
    if enabled:
        assert label[-1] == "12" and write and write[-1][0] == write[-1][1]
    else:
        assert err == ""


def test_cli_patches_shows_progress_in_a_log(seg_set, tmp_path, capsys):
    from fissure.cli import main

    assert main(["data", "patches", "--data", str(seg_set), "--out", str(tmp_path), "--size", "64",
                 "--stride", "64"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^label tiles: images 12/12 elapsed", err, re.M) and "Traceback" not in err
    assert re.search(r"^wrote \d+ crack and \d+ no_crack patches", err, re.M)
