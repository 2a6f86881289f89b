"""params.yaml's prepare: section is typed: a wrong type, a value out of range or an unknown key
is one line that names the file and the key (DataError, exit 1); a bad option names the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fissure.cli import main
from fissure.data.prepare import PrepareParams, load_params, make_params
from fissure.errors import DataError, UsageError


def _params(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("prepare:\n  count: ten\n", "prepare.count: Input should be a valid integer"),
    ("prepare:\n  count: '10'\n", "prepare.count: Input should be a valid integer"),
    ("prepare:\n  seed: 1.5\n", "prepare.seed: Input should be a valid integer"),
    ("prepare:\n  seed: -1\n", "prepare.seed: Input should be greater than or equal to 0"),
    ("prepare:\n  val_fraction: 1.5\n", "prepare.val_fraction: Input should be less than 1"),
    ("prepare:\n  patch_balance: sometimes\n", "prepare.patch_balance: Input should be a valid boolean"),
    ("prepare:\n  source: [synth, 3]\n", "prepare.source: Input should be a valid string"),
    ("prepare:\n  source: []\n", "prepare: source is empty"),
    ("prepare:\n  count: 0\n", "prepare: count must be at least 1 when source includes synth"),
    ("prepare:\n  val_fraction: 0.6\n  test_fraction: 0.5\n", "prepare: val_fraction + test_fraction must leave"),
])
def test_bad_value_names_the_file_and_the_key(tmp_path, text, message):
    path = _params(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_unknown_key_is_refused(tmp_path):
    path = _params(tmp_path, "prepare:\n  cuont: 3\n")
    with pytest.raises(DataError, match=r"prepare\.cuont: unknown key; known keys: source, count, "):
        load_params(path)
    with pytest.raises(DataError, match=r"^prepare\.cuont: unknown key"):
        make_params({"cuont": 3})


@pytest.mark.parametrize("text, message", [
    ("prepare:\n  count: ten\n", "prepare.count: Input should be a valid integer"),
    ("prepare:\n  seed: 1.5\n", "prepare.seed: Input should be a valid integer"),
    ("prepare:\n  cuont: 3\n", "prepare.cuont: unknown key"),
])
def test_fissure_data_prepare_with_a_bad_param_is_one_line_exit_1(tmp_path, capsys, text, message):
    path = _params(tmp_path, text)
    rc = main(["data", "prepare", "--params", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith(f"fissure: error: {path}: {message}"), err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_bad_option_is_a_usage_error_naming_the_option(tmp_path, capsys):
    with pytest.raises(UsageError, match="^--max-side: Input should be greater than or equal to 32$"):
        make_params({"count": 3}, max_side=16)
    rc = main(["data", "prepare", "--max-side", "16", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fissure: error: --max-side: Input should be greater than or equal to 32"]


def test_a_single_source_string_is_a_list():
    assert make_params({"source": "synth"}).source == ["synth"]
    assert make_params({"source": Path("data/real")}).source == ["data/real"]


def test_params_yaml_equals_the_built_in_defaults():
    """`fissure data prepare` without --params prepares what `dvc repro` prepares."""
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    section = yaml.safe_load(params.read_text())["prepare"]
    assert PrepareParams(**section) == PrepareParams()
    assert load_params(params) == PrepareParams().model_dump()
