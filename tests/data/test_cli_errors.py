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


def test_bad_count(capsys, tmp_path):
    _one_line_error(capsys, ["data", "synth", "--task", "segment", "--out", str(tmp_path / "o"), "--count", "0"],
                    "--count must be at least 1")


def test_bad_task_is_a_usage_error(capsys, tmp_path):
    _one_line_error(capsys, ["data", "synth", "--task", "detect", "--out", str(tmp_path / "o")], "--task",
                    code=2)


@pytest.mark.parametrize("cmd", [[], ["synth"], ["patches"], ["prepare"]])
def test_help(capsys, cmd):
    assert main(["data", *cmd, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
