"""Contact-sheet previews, and prepare on a slice of a real dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from fissure.cli import main
from fissure.data.loaders import segmentation_items
from fissure.data.prepare import make_params, prepare


def test_synth_preview_writes_a_sheet(tmp_path, capsys):
    for task in ("segment", "classify"):
        sheet = tmp_path / f"{task}.png"
        assert main(["data", "synth", "--task", task, "--out", str(tmp_path / task), "--count", "4",
                     "--size", "64", "--preview", str(sheet)]) == 0
        with Image.open(sheet) as im:
            assert im.width > 64 and im.height > 64
    assert "preview:" in capsys.readouterr().err


def _real_slice(root: Path, tmp: Path, n: int) -> Path:
    """A folder of symlinks to the first n image/mask pairs of a real set."""
    out = tmp / root.parent.name
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for item in segmentation_items(root)[:n]:
        os.symlink(item.image, out / "images" / item.image.name)
        os.symlink(item.mask, out / "masks" / item.mask.name)
    return out


@pytest.mark.realdata
def test_prepare_mixes_synth_and_real(shared_datasets, tmp_path):
    real = _real_slice(shared_datasets / "crackforest" / "all", tmp_path, 12)
    params = make_params(dict(source=["synth", str(real)], count=10, size=128, seed=1, feedback=None,
                              max_side=400, patch_size=64, patch_stride=64))
    m = prepare(params, tmp_path / "out")
    assert [s["images"] for s in m["sources"]] == [10, 12]
    real_ids = [p for p in (tmp_path / "out" / "segment").rglob("images/*crackforest-*.jpg")]
    assert len(real_ids) == 12
    assert {p.parent.parent.name for p in real_ids} == {"train", "val", "test"}
    with Image.open(real_ids[0]) as im:
        assert max(im.size) == 400  # 480x320 downscaled to max_side
    assert sum(m["counts"]["classify"]["train"].values()) > 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["content_hash"] == m["content_hash"]
