"""train_classifier.class_weights: how much the loss favours the rarer classes."""

from __future__ import annotations

import pytest
import torch

from fissure.errors import DataError
from fissure.training.config import load_config
from fissure.training.loop import class_weights

LABELS = [0] * 16 + [1] * 4  # 16 of class 0, 4 of class 1, none of class 2


def test_inverse_is_the_default_and_sqrt_inverse_is_its_square_root():
    assert load_config("classify").class_weights == "inverse"
    inverse = class_weights(LABELS, 2)
    assert torch.allclose(inverse, torch.tensor([0.4, 1.6]))  # 20/(2*16), 20/(2*4) = 0.625, 2.5, mean 1
    sqrt = class_weights(LABELS, 2, "sqrt_inverse")
    assert torch.allclose(sqrt, torch.tensor([2 / 3, 4 / 3]))  # 1 : 2, mean 1
    assert torch.equal(class_weights(LABELS, 2, "none"), torch.ones(2))
    assert torch.equal(class_weights(LABELS, 2, "inverse"), inverse)


def test_an_absent_class_gets_one_before_normalising():
    w = class_weights(LABELS, 3, "sqrt_inverse")
    raw = torch.tensor([(20 / 48) ** 0.5, (20 / 12) ** 0.5, 1.0])
    assert torch.allclose(w, raw / raw.mean())


@pytest.mark.parametrize("value", ["sqrt", 0.5, True])
def test_a_bad_value_names_the_key_and_the_choices(tmp_path, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"train_classifier:\n  class_weights: {value}\n")
    with pytest.raises(DataError) as info:
        load_config("classify", path)
    message = str(info.value)
    assert message.startswith(f"{path}: train_classifier.class_weights: Input should be 'inverse', 'sqrt_inverse' or 'none'"), message
    assert "\n" not in message


def test_the_setting_is_read_from_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_classifier:\n  class_weights: sqrt_inverse\n")
    assert load_config("classify", path).class_weights == "sqrt_inverse"
