import pytest
import torch

from fissure import MODEL_NAMES
from fissure.models import build_model, default_spec, preprocess_config


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


def test_segmenter_deep_supervision_heads_are_training_only():
    """With deep_supervision the coarse decoder levels have their own heads (coarsest first);
    a plain forward, the one serving makes, is the full-resolution logits alone and equals
    the model without the heads."""
    spec = default_spec("segment", size=32, base=4, depth=3, norm="group", deep_supervision=True)
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, aux = model(x, aux=True)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, 1, 32, 32)
    assert [a.shape[-1] for a in aux] == [8, 16]  # decoder levels at 1/4 and 1/2 of the input
    plain = build_model(default_spec("segment", size=32, base=4, depth=3, norm="group")).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")})
    with torch.no_grad():
        assert torch.allclose(plain(x), logits, atol=1e-6)
        assert plain(x, aux=True)[1] == []


def test_deep_supervision_loss_keeps_thin_cracks_when_pooled():
    from fissure.training.loop import deep_supervision_loss

    target = torch.zeros(1, 1, 16, 16)
    target[0, 0, 5, :] = 1.0  # a one-pixel crack: every 4x4 cell on row 1 holds some of it
    cell = torch.full((1, 1, 4, 4), -8.0)
    right, wrong = cell.clone(), cell.clone()
    right[0, 0, 1, :] = 8.0
    wrong[0, 0, 2, :] = 8.0
    assert deep_supervision_loss([right], target) < 0.05 < deep_supervision_loss([wrong], target)



def test_skeleton_is_each_cracks_centre_line_whatever_its_width():
    from fissure.training.loop import skeleton

    mask = torch.zeros(1, 1, 48, 48)
    mask[0, 0, 8:17, :] = 1  # 9 px wide
    mask[0, 0, 30, 4:44] = 1  # 1 px wide
    skel = skeleton(mask)
    assert bool((skel <= mask).all())  # never outside the crack
    assert skel[0, 0, :, 24].nonzero().flatten().tolist() == [12, 30]  # the wide one's middle row; the thin one itself
    assert torch.equal(skel[0, 0, 30, 4:44], torch.ones(40))


def test_skeleton_recall_loss_weighs_a_missed_thin_crack_as_much_as_a_missed_wide_one():
    from fissure.training.loop import dice_loss, skeleton_recall_loss

    target = torch.zeros(1, 1, 48, 48)
    target[0, 0, 8:17, 4:44] = 1  # wide, 360 px
    target[0, 0, 30, 4:44] = 1  # thin, 40 px, as long
    hit = lambda keep: torch.where(keep > 0, torch.tensor(8.0), torch.tensor(-8.0))  # noqa: E731
    only_wide, only_thin = target.clone(), target.clone()
    only_wide[0, 0, 30] = 0
    only_thin[0, 0, 8:17] = 0
    # Dice barely notices the thin crack missed; the skeleton term counts both lines alike
    assert dice_loss(hit(only_wide), target) < 0.1 < dice_loss(hit(only_thin), target)
    wide_missed, thin_missed = skeleton_recall_loss(hit(only_thin), target), skeleton_recall_loss(hit(only_wide), target)
    assert 0.4 < float(thin_missed) < 0.6 and 0.4 < float(wide_missed) < 0.6
    assert float(skeleton_recall_loss(hit(target), target)) < 0.01
