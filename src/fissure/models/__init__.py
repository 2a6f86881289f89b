"""Model architectures and the spec that rebuilds them anywhere (training, MLflow, TorchServe).

A *spec* is a small JSON-able dict saved next to every set of weights::

    {"task": "segment", "arch": "attention-unet", "params": {"base": 16, "depth": 4},
     "classes": ["background", "crack"], "preprocess": {"size": 256, "mean": [...], "std": [...]}}

With a pretrained encoder (``encoder: efficientnet-lite0`` in the params) the architecture is
``efficientnet-attention-unet`` / ``efficientnet-classifier`` and the preprocess mean/std are
the encoder's own input normalisation, so serving feeds the model what its weights expect.
"""

from __future__ import annotations

import torch
from torch import nn

from fissure import MODEL_NAMES
from fissure.models.classifier import CrackClassifier, EncoderClassifier
from fissure.models.encoders import ENCODER_NORMALIZATION
from fissure.models.segmenter import AttentionUNet, EncoderAttentionUNet
from fissure.preprocess import PreprocessConfig

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "resnet-lite": CrackClassifier,
    "attention-unet": AttentionUNet,
    "efficientnet-classifier": EncoderClassifier,
    "efficientnet-attention-unet": EncoderAttentionUNet,
}
DEFAULT_ARCH = {"classify": "resnet-lite", "segment": "attention-unet"}
ENCODER_ARCH = {"classify": "efficientnet-classifier", "segment": "efficientnet-attention-unet"}
NO_ENCODER = "none"
# params that only one family takes: the from-scratch sizes, the encoder's weights
SCRATCH_ONLY = {"classify": ("width", "blocks"), "segment": ("depth",)}
ENCODER_ONLY = ("encoder", "pretrained")
DEFAULT_CLASSES = {"classify": ["no_crack", "crack"], "segment": ["background", "crack"]}
DEFAULT_SIZE = {"classify": 224, "segment": 256}


def default_spec(task: str, **params) -> dict:
    """A spec with the defaults for a task; ``params`` go to the architecture.

    ``encoder`` (``none`` or absent: from scratch) picks the pretrained-encoder architecture;
    the params of the other family (``depth``/``width``/``blocks`` or ``pretrained``) are dropped.
    """
    if task not in DEFAULT_ARCH:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(DEFAULT_ARCH)}")
    size = params.pop("size", DEFAULT_SIZE[task])
    gray_std = float(params.pop("gray_std", 0.0))
    classes = params.pop("classes", DEFAULT_CLASSES[task])
    if task == "classify":
        params.setdefault("num_classes", len(classes))
    encoder = params.get("encoder", NO_ENCODER)
    if encoder == NO_ENCODER:
        arch, preprocess = DEFAULT_ARCH[task], PreprocessConfig(size=size, gray_std=gray_std)
        params = {k: v for k, v in params.items() if k not in ENCODER_ONLY}
    else:
        if encoder not in ENCODER_NORMALIZATION:
            raise ValueError(f"unknown encoder {encoder!r}; known: {NO_ENCODER}, {', '.join(ENCODER_NORMALIZATION)}")
        mean, std = ENCODER_NORMALIZATION[encoder]
        arch, preprocess = ENCODER_ARCH[task], PreprocessConfig(size=size, mean=mean, std=std, gray_std=gray_std)
        params = {k: v for k, v in params.items() if k not in SCRATCH_ONLY[task]}
    return {
        "task": task,
        "name": MODEL_NAMES[task],
        "arch": arch,
        "params": params,
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
    }


def build_model(spec: dict, *, pretrained: bool | None = None) -> nn.Module:
    """Instantiate the (untrained) architecture a spec describes, in channels-last layout.

    Channels-last (NHWC) weights make oneDNN's CPU convolutions 1.6-2x faster for both models,
    in training and inference (docs/benchmarks.md), and suit CUDA's mixed precision too.
    Loading a state dict keeps the layout; NCHW inputs are accepted as they are.

    ``pretrained``: None builds what the spec says (training: the encoder starts from its
    ImageNet weights); False skips reading them, for a loader that overwrites every weight anyway.
    """
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    params = dict(spec.get("params", {}))
    if pretrained is not None and "pretrained" in params:
        params["pretrained"] = pretrained
    return ARCHITECTURES[arch](**params).to(memory_format=torch.channels_last)


def preprocess_config(spec: dict) -> PreprocessConfig:
    return PreprocessConfig.from_dict(spec.get("preprocess"))


# its sibling: how the model sees images larger than its input (native-resolution tiles or a resize)
from fissure.models.tiling import TilingConfig, tiling_config  # noqa: E402,F401
