"""crack-segmenter: Attention U-Net (Oktay et al., 2018) with a configurable base width.

Attention gates weight each skip connection by what the coarser decoder level has found,
which suppresses texture and keeps thin crack structures. With ``deep_supervision`` the coarser
decoder levels get their own 1x1 prediction heads, trained against max-pooled masks ("is there
a crack in this block"); inference ignores them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm (groups of at least 8 channels: the most groups up to channels // 8
    that divide the channels): GroupNorm's statistics are per image, so small training crops and
    full-size eval images are normalised alike."""
    if kind == "group":
        groups = max(channels // 8, 1)
        while channels % groups:  # e.g. 60 channels (Lite2's 120-wide skip, halved): 6 groups, not 7
            groups -= 1
        return nn.GroupNorm(groups, channels)
    return nn.BatchNorm2d(channels)


def conv_block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        norm_layer(norm, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        norm_layer(norm, cout),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention: alpha = sigmoid(psi(relu(Wg*g + Wx*x))); returns x * alpha."""

    def __init__(self, gate_ch: int, skip_ch: int, inter_ch: int, norm: str = "batch"):
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=False), norm_layer(norm, inter_ch))
        self.w_x = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), norm_layer(norm, inter_ch))
        # No BatchNorm on the one-channel attention map: its batch statistics on small training
        # crops differ from those of full images and can switch the gate off in eval mode.
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(F.relu(self.w_g(g) + self.w_x(x), inplace=True))
        return x * alpha


class AttentionUNet(nn.Module):
    """Encoder of ``depth`` levels (widths base * 2**i), attention-gated decoder, 1-channel logits.

    Input height and width must be multiples of 2**depth; the output has the input's size.
    ``forward(x, aux=True)`` also returns the coarse heads' logits (coarsest first) when the
    model was built with ``deep_supervision``.
    """

    def __init__(self, base: int = 16, depth: int = 4, in_channels: int = 3, norm: str = "batch",
                 deep_supervision: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList(
            conv_block(in_channels if i == 0 else widths[i - 1], widths[i], norm) for i in range(depth + 1)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in reversed(range(depth))
        )
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i], max(widths[i] // 2, 1), norm) for i in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(conv_block(widths[i] * 2, widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Deep supervision (Lee et al., 2015): a direct loss on the coarse levels teaches them the
        # context that tells a crack from a joint or a sealant band far sooner than the gradient
        # that reaches them through the full-resolution head alone.
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(widths[i], 1, 1) for i in reversed(range(1, depth))) if deep_supervision else None
        )

    def forward(self, x: torch.Tensor, aux: bool = False):
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return _decode(self, skips, aux)


def _decode(net: nn.Module, skips: list[torch.Tensor], aux: bool):
    """The attention-gated decoder both U-Nets share (``net.ups``, ``gates``, ``decoders``,
    ``head``, ``aux_heads``): from the coarsest map in ``skips`` up, each level upsampled, cut to
    its skip's size, gated against the skip and decoded; the logits, and with ``aux`` the
    deep-supervision logits of the coarser levels too."""
    x = skips.pop()
    coarse = []
    for up, gate, dec in zip(net.ups, net.gates, net.decoders):
        skip = skips.pop()
        g = _crop_to(up(x), skip)
        x = dec(torch.cat([gate(g, skip), g], dim=1))
        coarse.append(x)
    logits = net.head(x)
    if not aux:
        return logits
    heads = net.aux_heads if net.aux_heads is not None else []
    return logits, [head(feature) for head, feature in zip(heads, coarse)]


def _crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cut to ``like``'s height and width: an encoder map at stride s is ceil(H/s) wide, so
    twice the next coarser one can be a pixel larger; TensorFlow-style padding puts that pixel
    bottom/right, which is where it is cut."""
    return x[..., : like.shape[-2], : like.shape[-1]]


class EncoderAttentionUNet(nn.Module):
    """A pretrained encoder (:mod:`fissure.models.encoders`) under the attention-gated decoder.

    The encoder gives maps at strides 2..32; a small full-resolution block on the input adds a
    stride-1 skip (thin cracks are one or two pixels wide, finer than any encoder map). The
    decoder climbs from stride 32 to 1 with the same pieces as :class:`AttentionUNet`: 2x2
    transposed conv, an :class:`AttentionGate` on the skip, a :func:`conv_block` of width
    ``base * stride``. Any input size works (the output has the input's size).

    ``pretrained`` loads the encoder's ImageNet weights when the model is built (training starts
    there); a saved model's state dict holds every weight, so loaders pass ``pretrained=False``.
    ``deep_supervision``: heads on the decoder levels at strides 16, 8, 4, 2 (coarsest first).
    """

    def __init__(self, encoder: str = "efficientnet-lite0", pretrained: bool = True, base: int = 8,
                 norm: str = "group", deep_supervision: bool = False):
        super().__init__()
        from fissure.models.encoders import build_encoder

        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.encoder = build_encoder(encoder, pretrained)
        # the ImageNet head (1280-channel conv, classifier) is not used for segmentation
        for name in ("_conv_head", "_bn1", "_dropout", "_fc"):
            delattr(self.encoder, name)
        skip_channels = (base, *self.encoder.feature_channels[:-1])  # strides 1, 2, 4, 8, 16
        widths = [base * 2**i for i in range(len(skip_channels))]
        self.stem = conv_block(3, base, norm)
        cin = self.encoder.feature_channels[-1]
        ups, gates, decoders = [], [], []
        for skip, width in zip(reversed(skip_channels), reversed(widths)):
            ups.append(nn.ConvTranspose2d(cin, width, 2, 2))
            gates.append(AttentionGate(width, skip, max(min(width, skip) // 2, 1), norm))
            decoders.append(conv_block(skip + width, width, norm))
            cin = width
        self.ups, self.gates, self.decoders = nn.ModuleList(ups), nn.ModuleList(gates), nn.ModuleList(decoders)
        self.head = nn.Conv2d(base, 1, 1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(w, 1, 1) for w in reversed(widths[1:])) if deep_supervision else None
        )

    def forward(self, x: torch.Tensor, aux: bool = False):
        return _decode(self, [self.stem(x), *self.encoder.features(x)], aux)
