import pytest
import torch

from fissure import MODEL_NAMES
from fissure.models import build_model, default_spec, preprocess_config
from fissure.models import io as model_io


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_default_spec_builds_and_runs(task):
    spec = default_spec(task, size=64, **({"width": 8} if task == "classify" else {"base": 4}))
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert spec["name"] == MODEL_NAMES[task]
    assert y.shape == ((2, 2) if task == "classify" else (2, 1, 64, 64))
    assert preprocess_config(spec).size == 64


def test_classifier_has_cam_layer_with_spatial_output():
    model = build_model(default_spec("classify", width=8, num_classes=3, classes=["a", "b", "c"]))
    feats = model.cam_layer(model.stages[:-1](model.stem(torch.randn(1, 3, 64, 64))))
    assert feats.ndim == 4 and feats.shape[-1] > 1


def test_unknown_task_and_arch_are_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        default_spec("detect")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"arch": "vit"})


def test_save_and_load_local_mlflow_model(tmp_path):
    spec = default_spec("segment", size=32, base=4, depth=2)
    model = build_model(spec)
    path = model_io.save_model(model, spec, tmp_path / "m")
    loaded = model_io.load_model(str(path))
    assert loaded.spec == spec and loaded.task == "segment"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded.module(x))


def test_load_missing_model_is_a_clear_error(tmp_path):
    from fissure.errors import NotFoundError

    with pytest.raises(NotFoundError, match="not found"):
        model_io.load_model(str(tmp_path / "nope"))
    with pytest.raises(NotFoundError):
        model_io.load_model("models:/crack-classifier@champion")


def test_segmenter_norms():
    gn = build_model(default_spec("segment", size=32, base=8, depth=2, norm="group"))
    kinds = {type(m).__name__ for m in gn.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    # GroupNorm statistics are per image: in training mode an image's output does not depend
    # on the other images of the batch (BatchNorm's would)
    gn.train()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gn(x)[:1], gn(x[:1]), atol=1e-5)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_model(default_spec("segment", size=32, base=4, depth=2, norm="layer"))


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_models_are_channels_last_and_agree_with_nchw(task):
    """build_model hands out channels-last weights (faster CPU convolutions); the numbers are
    those of the same weights in the default layout."""
    spec = default_spec(task, size=64, **({"width": 8} if task == "classify" else {"base": 4, "depth": 2}))
    fast = build_model(spec).eval()
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_model(spec).to(memory_format=torch.contiguous_format).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-4)
