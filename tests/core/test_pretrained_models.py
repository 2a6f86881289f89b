"""The pretrained-encoder models (efficientnet-attention-unet, efficientnet-classifier): chosen by
``encoder`` in the params, built with the ImageNet weights in the encoder, any input size, deep
supervision, gradients everywhere, a spec that round-trips weights_only without the ImageNet file,
and the encoder's input normalisation in the spec, which serving applies."""

from __future__ import annotations

import typing

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from fissure.errors import DataError, FissureError
from fissure.models import build_model, default_spec, encoders, preprocess_config
from fissure.models import io as model_io
from fissure.preprocess import IMAGENET_MEAN, image_to_tensor
from fissure.training.config import ClassifierArch, load_config

ENCODER = "efficientnet-lite0"
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's grace_hopper.jpg


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imagenet() -> dict:
    return encoders.load_state()


@pytest.fixture(scope="module")
def seg():
    return _segmenter()[1].eval()


@pytest.fixture(scope="module")
def clf():
    return _classifier()[1].eval()


def _segmenter(pretrained=True, **kw):
    kw = {"base": 4, "norm": "group", "deep_supervision": True, **kw}
    spec = default_spec("segment", size=64, encoder=ENCODER, pretrained=pretrained, **kw)
    return spec, build_model(spec)


def _classifier(pretrained=True, size=96):
    spec = default_spec("classify", size=size, encoder=ENCODER, pretrained=pretrained, dropout=0.2,
                        classes=["no_crack", "crack", "other"])
    return spec, build_model(spec)


# --------------------------------------------------------------------------- spec


def test_encoder_picks_the_architecture_and_its_normalisation():
    spec, _ = _segmenter(depth=4)  # depth belongs to the from-scratch model: dropped
    assert spec["arch"] == "efficientnet-attention-unet"
    assert spec["params"] == {"encoder": ENCODER, "pretrained": True, "base": 4, "norm": "group",
                              "deep_supervision": True}
    cfg = preprocess_config(spec)
    assert cfg.mean == pytest.approx(encoders.INPUT_MEAN) and cfg.std == pytest.approx(encoders.INPUT_STD)
    spec, _ = _classifier()
    assert spec["arch"] == "efficientnet-classifier" and spec["params"]["num_classes"] == 3
    assert preprocess_config(spec).mean == pytest.approx(encoders.INPUT_MEAN)
    # without an encoder: the from-scratch models and their specs exactly as before
    scratch = default_spec("segment", encoder="none", pretrained=True, base=4, depth=2)
    assert scratch["arch"] == "attention-unet" and scratch["params"] == {"base": 4, "depth": 2}
    assert preprocess_config(scratch).mean == pytest.approx(IMAGENET_MEAN)
    assert default_spec("classify", width=8)["arch"] == "resnet-lite"
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        default_spec("segment", encoder="vgg")


def test_params_select_the_encoder_and_refuse_an_unknown_one(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train_segmenter:\n  model: {encoder: efficientnet-lite0, pretrained: false}\n")
    assert load_config("segment", params).model["encoder"] == ENCODER
    params.write_text("train_classifier:\n  model: {encoder: resnet50}\n")
    with pytest.raises(DataError, match=r"train_classifier\.model\.encoder: Input should be 'none', 'efficientnet-lite0'"):
        load_config("classify", params)
    # the params' choices are exactly the encoders the models know
    assert set(typing.get_args(ClassifierArch.model_fields["encoder"].annotation)) == {"none", *encoders.ENCODERS}


# --------------------------------------------------------------------------- weights


def test_the_encoder_holds_the_imagenet_weights(imagenet):
    for pretrained in (True, False):
        _, seg = _segmenter(pretrained)
        _, clf = _classifier(pretrained)
        for encoder, head_kept in ((seg.encoder, False), (clf.backbone, True)):
            state = encoder.state_dict()
            keys = [k for k in imagenet if not k.startswith("_fc.") and (head_kept or not k.startswith(("_conv_head", "_bn1.")))]
            assert len(keys) > 200 and set(keys) <= set(state)
            same = [torch.equal(state[k], imagenet[k]) for k in keys]
            if pretrained:
                assert all(same), [k for k, s in zip(keys, same) if not s][:3]
            else:  # random initialisation: the conv weights differ
                assert not any(s for k, s in zip(keys, same) if k.endswith("conv.weight") or k.endswith("_stem.weight"))
    # the segmenter carries no ImageNet head (1.7 M numbers a mask never uses)
    assert not any(k.startswith(("encoder._fc", "encoder._conv_head")) for k in seg.state_dict())


def test_pretrained_classifier_backbone_recognises_an_imagenet_image(imagenet):
    """Behaviour, not only equal tensors: through the spec's own preprocessing, the classifier's
    backbone with ImageNet's classifier on top names the photo's class; random weights do not."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    tops = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        spec, model = _classifier(pretrained, size=224)
        x = image_to_tensor(Image.open(path).convert("RGB"), preprocess_config(spec))[None]
        with torch.no_grad():
            logits = torch.nn.functional.linear(model.eval().backbone.pool(x), imagenet["_fc.weight"], imagenet["_fc.bias"])
        tops[pretrained] = logits.topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in tops[True], tops
    assert MILITARY_UNIFORM not in tops[False], tops


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("height, width", [(64, 64), (96, 160), (100, 75), (33, 47), (257, 255)])
def test_any_input_size(seg, clf, height, width):
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        logits, aux = seg(x, aux=True)
        assert logits.shape == (2, 1, height, width)
        # deep supervision: strides 16, 8, 4, 2, coarsest first; ceil like the encoder's maps
        assert [tuple(a.shape[-2:]) for a in aux] == [(-(-height // s), -(-width // s)) for s in (16, 8, 4, 2)]
        assert clf(x).shape == (2, 3)


@pytest.mark.parametrize("encoder", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_encoders_build_both_models(encoder):
    """Lite1 (deeper) and Lite2 (deeper and wider: skips of 48 and 120 channels, whose gates'
    GroupNorms need a group count that divides them) under the decoder and the classifier head."""
    spec = default_spec("segment", size=64, encoder=encoder, pretrained=False, base=8, norm="group",
                        deep_supervision=True)
    seg = build_model(spec).eval()
    assert seg.encoder.feature_channels == encoders.efficientnet_lite(encoder, False).feature_channels
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert seg(x).shape == (1, 1, 70, 90)
    spec = default_spec("classify", size=96, encoder=encoder, pretrained=False, classes=["no_crack", "crack"])
    clf = build_model(spec).eval()
    with torch.no_grad():
        assert clf(x).shape == (1, 2)
    assert len(clf.backbone._blocks) == 21


def test_group_norm_groups_divide_the_channels():
    from fissure.models.segmenter import norm_layer

    # 8 channels a group where that divides; else the most groups below that which do
    assert [norm_layer("group", c).num_groups for c in (4, 16, 20, 24, 60, 44)] == [1, 2, 2, 3, 6, 4]


def test_deep_supervision_heads_are_training_only(seg):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, aux = seg(x, aux=True)
        assert torch.equal(seg(x), logits) and len(aux) == 4
    plain_spec = default_spec("segment", size=64, encoder=ENCODER, pretrained=False, base=4, norm="group")
    plain = build_model(plain_spec).eval()
    assert plain.aux_heads is None
    plain.load_state_dict({k: v for k, v in seg.state_dict().items() if not k.startswith("aux_heads.")})
    with torch.no_grad():
        assert torch.allclose(plain(x), logits, atol=1e-5)
        assert plain(x, aux=True)[1] == []


def test_gradients_reach_decoder_and_encoder():
    from fissure.training.loop import deep_supervision_loss, segmentation_loss

    _, seg = _segmenter()
    seg.train()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    y = (torch.rand(2, 1, 64, 64) > 0.95).float()
    logits, aux = seg(x, aux=True)
    (segmentation_loss(logits, y) + deep_supervision_loss(aux, y)).backward()
    for part in ("stem", "ups", "gates", "decoders", "head", "aux_heads", "encoder._conv_stem", "encoder._blocks.0.",
                 "encoder._blocks.15."):
        grads = [p.grad for n, p in seg.named_parameters() if n.startswith(part)]
        assert grads and all(g is not None for g in grads), part
        assert sum(float(g.abs().sum()) for g in grads) > 0, part
    _, clf = _classifier()
    torch.nn.functional.cross_entropy(clf.train()(x), torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in clf.parameters())
    assert float(clf.backbone._conv_stem.weight.grad.abs().sum()) > 0


def test_cam_layer_is_spatial(clf):
    acts = {}
    hook = clf.cam_layer.register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
    try:
        with torch.no_grad():
            clf(torch.randn(1, 3, 96, 96))
    finally:
        hook.remove()
    assert acts["a"].shape == (1, 320, 3, 3)


# --------------------------------------------------------------------------- saving, loading, serving


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_round_trip_is_weights_only_and_needs_no_imagenet_file(task, tmp_path, monkeypatch):
    spec, model = _segmenter() if task == "segment" else _classifier()
    with torch.no_grad():  # weights that are neither ImageNet's nor random: a trained model
        for p in model.parameters():
            p.add_(0.01)
    path = model_io.save_model(model, spec, tmp_path / "m")

    def no_imagenet(name="efficientnet-lite0"):
        raise FissureError("the ImageNet weights were read while loading a saved model")

    monkeypatch.setattr(encoders, "weights_path", no_imagenet)
    loaded = model_io.load_model(str(path))
    assert loaded.spec == spec
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded.module(x), atol=1e-5)
    # building from the spec as training does reads them, so the check above has teeth
    with pytest.raises(FissureError, match="ImageNet weights were read"):
        build_model(spec)


def test_serving_preprocesses_with_the_encoders_normalisation():
    from fissure.serving.runtime import ModelRuntime

    spec, model = _segmenter(pretrained=False)
    runtime = ModelRuntime(model, spec)
    gray = Image.fromarray(np.full((50, 80, 3), 127, np.uint8))
    item = runtime.prepare_image(_png(gray))
    # TF-Lite scaling: (127 - 127) / 128 = 0; ImageNet's mean/std would give about -0.1..-0.5
    assert item.tensor.shape == (3, 64, 64) and float(item.tensor.abs().max()) < 1e-6
    out = runtime.predict([item])[0]
    assert "mask_png" in out


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
