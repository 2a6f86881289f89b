"""params.yaml's training sections are typed: a wrong type or an unknown key is one line naming the key."""

from __future__ import annotations

import pytest

from fissure.cli import main
from fissure.errors import DataError, UsageError
from fissure.training.config import TrainConfig, load_config


def _params(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("train_segmenter:\n  epochs: ten\n", "train_segmenter.epochs: Input should be a valid integer"),
    ("train_segmenter:\n  epochs: '10'\n", "train_segmenter.epochs: Input should be a valid integer"),
    ("train_segmenter:\n  augment: sometimes\n", "train_segmenter.augment: Input should be a valid boolean"),
    ("train_segmenter:\n  ema: 1.5\n", "train_segmenter.ema: Input should be less than 1"),
    ("train_segmenter:\n  model: {norm: layer}\n", "train_segmenter.model.norm: Input should be 'batch' or 'group'"),
    ("train_segmenter:\n  model: {depth: 2.5}\n", "train_segmenter.model.depth: Input should be a valid integer"),
    ("train_segmenter:\n  crop: 100\n", "train_segmenter: crop 100 must be a multiple of 16"),
    ("train_segmenter: [1, 2]\n", "train_segmenter must be a mapping"),
    ("train_segmenter:\n  contrast: [1.2, 0.8]\n", "train_segmenter: contrast [1.2, 0.8] must be [low, high] with 0 < low <= high"),
    ("train_segmenter:\n  contrast: [0.5]\n", "train_segmenter.contrast: List should have at least 2 items"),
    ("train_segmenter:\n  scale: [2.0, 0.5]\n", "train_segmenter: scale [2.0, 0.5] must be [low, high] with 0 < low <= high"),
    ("train_segmenter:\n  noise: -2\n", "train_segmenter.noise: Input should be greater than or equal to 0"),
    ("train_segmenter:\n  skeleton_weight: -1\n", "train_segmenter.skeleton_weight: Input should be greater than or equal to 0"),
    ("train_segmenter:\n  blur: 10\n", "train_segmenter.blur: Input should be less than or equal to 8"),
    ("train_segmenter:\n  fade: [0.5, 1.5]\n", "train_segmenter: fade [0.5, 1.5] must be [low, high] with 0 <= low <= high <= 1"),
])
def test_bad_value_names_the_file_and_the_key(tmp_path, text, message):
    path = _params(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_config("segment", path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


@pytest.mark.parametrize("text, key, known", [
    ("train_classifier:\n  epoch: 3\n", "train_classifier.epoch", "epochs"),
    ("train_classifier:\n  model: {widht: 8}\n", "train_classifier.model.widht", "width"),
])
def test_unknown_key_is_refused(tmp_path, text, key, known):
    with pytest.raises(DataError, match=rf"{key}: unknown key; known keys: .*\b{known}\b"):
        load_config("classify", _params(tmp_path, text))


def test_a_bad_override_is_a_usage_error_naming_the_option(tmp_path):
    with pytest.raises(UsageError, match="^--batch-size: Input should be greater than or equal to 1$"):
        load_config("classify", _params(tmp_path, "train_classifier:\n  epochs: 3\n"), batch_size=0)


def test_train_config_checks_types_when_built_in_code():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs="ten")
    with pytest.raises(ValueError, match="unknown_key"):
        TrainConfig(unknown_key=1)


def test_fissure_train_with_a_badly_typed_param_is_one_line_exit_1(tmp_path, capsys):
    path = _params(tmp_path, "train_segmenter:\n  epochs: ten\n")
    rc = main(["train", "--task", "segment", "--data", str(tmp_path), "--params", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"fissure: error: {path}: train_segmenter.epochs: Input should be a valid integer"]


def test_fissure_train_with_a_bad_option_value_is_exit_2(tmp_path, capsys):
    rc = main(["train", "--task", "segment", "--data", str(tmp_path), "--epochs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["fissure: error: --epochs: Input should be greater than or equal to 1"]
