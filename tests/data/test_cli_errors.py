"""Every user error is one line on stderr, never a traceback: exit 2 for a bad option (click's
usage error), 1 for bad data or a bad params file found at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from fissure.cli import main
from fissure.data.synth import write_dataset


def _one_line_error(capsys, argv: list[str], match: str, code: int = 1) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    errors = [line for line in err if line.startswith("fissure: error:") or line.startswith("Error:")]
    assert len(errors) == 1, err
    assert match in errors[0], errors[0]
    assert not any("Traceback" in line for line in err)


@pytest.fixture
def seg(tmp_path) -> Path:
    root = tmp_path / "seg"
    write_dataset(root, "segment", 3, seed=0, size=96)
    return root


def test_missing_folder(capsys, tmp_path):
    _one_line_error(capsys, ["data", "patches", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                    "no such folder")


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    _one_line_error(capsys, ["data", "patches", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                    "no images")


def test_not_a_segmentation_folder(capsys, tmp_path):
    (tmp_path / "flat").mkdir()
    _one_line_error(capsys, ["data", "prepare", "--source", str(tmp_path / "flat"), "--out", str(tmp_path / "o")],
                    "needs images/ and masks/")


def test_image_without_mask(capsys, seg, tmp_path):
    next((seg / "masks").glob("*.png")).unlink()
    _one_line_error(capsys, ["data", "prepare", "--source", str(seg), "--out", str(tmp_path / "o")],
                    "no mask for")


def test_unreadable_image(capsys, seg, tmp_path):
    next((seg / "images").glob("*.jpg")).write_bytes(b"not a jpeg at all")
    _one_line_error(capsys, ["data", "patches", "--data", str(seg), "--out", str(tmp_path / "o"), "--size", "32",
                             "--stride", "32", "--no-balance"],
                    "not an image")


def test_unreadable_mask(capsys, seg, tmp_path):
    next((seg / "masks").glob("*.png")).write_bytes(b"\x89PNG broken")
    _one_line_error(capsys, ["data", "patches", "--data", str(seg), "--out", str(tmp_path / "o")],
                    "unreadable mask")


def test_mask_of_another_size(capsys, seg, tmp_path):
    from PIL import Image

    m = next((seg / "masks").glob("*.png"))
    Image.open(m).resize((50, 40)).save(m)
    _one_line_error(capsys, ["data", "prepare", "--source", str(seg), "--out", str(tmp_path / "o")],
                    "but its mask")


def test_missing_params_file(capsys, tmp_path):
    _one_line_error(capsys, ["data", "prepare", "--params", str(tmp_path / "p.yaml")], "no such params file")


def test_invalid_yaml(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("prepare: [unclosed\n")
    _one_line_error(capsys, ["data", "prepare", "--params", str(tmp_path / "p.yaml")], "invalid YAML")


def test_no_prepare_section(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  epochs: 3\n")
    _one_line_error(capsys, ["data", "prepare", "--params", str(tmp_path / "p.yaml")], "no 'prepare:' section")


def test_unknown_key(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("prepare:\n  cuont: 3\n")
    _one_line_error(capsys, ["data", "prepare", "--params", str(tmp_path / "p.yaml")], "prepare.cuont: unknown key")


def test_bad_fraction_in_params(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("prepare:\n  val_fraction: 0.6\n  test_fraction: 0.5\n")
    _one_line_error(capsys, ["data", "prepare", "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o")],
                    "leave something to train on")


def test_bad_fraction_options_are_a_usage_error(capsys, tmp_path):
    _one_line_error(capsys, ["data", "prepare", "--val-fraction", "0.6", "--test-fraction", "0.5",
                             "--out", str(tmp_path / "o")], "leave something to train on", code=2)


@pytest.mark.parametrize("option, value, message", [
    ("--count", "0", "--count must be at least 1 (got 0)"),
    ("--count", "-1", "--count must be at least 1 (got -1)"),
    ("--size", "3", "--size must be between 32 and 4096 pixels (got 3)"),
    ("--seed", "-1", "--seed must be at least 0 (got -1)"),
])
def test_synth_option_out_of_range_is_a_usage_error(capsys, tmp_path, option, value, message):
    _one_line_error(capsys, ["data", "synth", "--task", "segment", "--out", str(tmp_path / "o"), option, value],
                    message, code=2)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--size", "0", "patch size must be at least 8 pixels (got 0)"),
    ("--stride", "-5", "patch stride must be at least 1 pixel (got -5)"),
    ("--threshold", "2", "patch threshold must be a fraction in (0, 1) (got 2.0)"),
    ("--margin", "-1", "patch margin must be >= 0 (got -1)"),
    ("--min-length", "-1", "minimum crack length must be >= 0 pixels (got -1)"),
    ("--max-per-class", "0", "patches per class must be at least 1 (got 0)"),
    ("--seed", "-1", "patch seed must be >= 0 (got -1)"),
])
def test_patches_option_out_of_range_is_a_usage_error(capsys, seg, tmp_path, option, value, message):
    _one_line_error(capsys, ["data", "patches", "--data", str(seg), "--out", str(tmp_path / "o"), option, value],
                    message, code=2)
    assert not (tmp_path / "o").exists()
    # checked before the folder is read: a bad value is named even when --data is wrong too
    _one_line_error(capsys, ["data", "patches", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                             option, value], message, code=2)


def test_a_mask_without_an_image_is_named(capsys, seg, tmp_path):
    """As `fissure data import` does, both directions: here masks whose image is missing (up to three named)."""
    from fissure.data.loaders import segmentation_items

    masks = sorted((seg / "masks").glob("*.png"))
    for name in ("x1", "x2", "x3", "x4"):
        (seg / "masks" / f"{name}.png").write_bytes(masks[0].read_bytes())
    _one_line_error(capsys, ["data", "prepare", "--source", str(seg), "--feedback", "", "--out", str(tmp_path / "o")],
                    f"{seg / 'images'}: no image for the mask(s) x1.png, x2.png, x3.png and 1 more in {seg / 'masks'}")
    _one_line_error(capsys, ["data", "patches", "--data", str(seg), "--out", str(tmp_path / "p")], "no image for")
    for name in ("x1", "x2", "x3", "x4"):
        (seg / "masks" / f"{name}.png").unlink()
    (seg / "masks" / "._x5.png").write_bytes(b"\0")  # a macOS resource fork is no mask
    assert len(segmentation_items(seg)) == 3


def test_bad_task_is_a_usage_error(capsys, tmp_path):
    _one_line_error(capsys, ["data", "synth", "--task", "detect", "--out", str(tmp_path / "o")], "--task",
                    code=2)


@pytest.mark.parametrize("cmd", [[], ["synth"], ["patches"], ["prepare"]])
def test_help(capsys, cmd):
    assert main(["data", *cmd, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
