"""Model architectures and the spec that rebuilds them anywhere (training, MLflow, TorchServe).

A *spec* is a small JSON-able dict saved next to every set of weights::

    {"task": "segment", "arch": "attention-unet", "params": {"base": 16, "depth": 4},
     "classes": ["background", "crack"], "preprocess": {"size": 256, "mean": [...], "std": [...]}}
"""

from __future__ import annotations

import torch
from torch import nn

from fissure import MODEL_NAMES
from fissure.models.classifier import CrackClassifier
from fissure.models.segmenter import AttentionUNet
from fissure.preprocess import PreprocessConfig

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "resnet-lite": CrackClassifier,
    "attention-unet": AttentionUNet,
}
DEFAULT_ARCH = {"classify": "resnet-lite", "segment": "attention-unet"}
DEFAULT_CLASSES = {"classify": ["no_crack", "crack"], "segment": ["background", "crack"]}
DEFAULT_SIZE = {"classify": 224, "segment": 256}


def default_spec(task: str, **params) -> dict:
    """A spec with the defaults for a task; ``params`` go to the architecture."""
    if task not in DEFAULT_ARCH:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(DEFAULT_ARCH)}")
    size = params.pop("size", DEFAULT_SIZE[task])
    classes = params.pop("classes", DEFAULT_CLASSES[task])
    if task == "classify":
        params.setdefault("num_classes", len(classes))
    return {
        "task": task,
        "name": MODEL_NAMES[task],
        "arch": DEFAULT_ARCH[task],
        "params": params,
        "classes": list(classes),
        "preprocess": PreprocessConfig(size=size).to_dict(),
    }


def build_model(spec: dict) -> nn.Module:
    """Instantiate the (untrained) architecture a spec describes, in channels-last layout.

    Channels-last (NHWC) weights make oneDNN's CPU convolutions 1.6-2x faster for both models,
    in training and inference (docs/benchmarks.md), and suit CUDA's mixed precision too.
    Loading a state dict keeps the layout; NCHW inputs are accepted as they are.
    """
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**spec.get("params", {})).to(memory_format=torch.channels_last)


def preprocess_config(spec: dict) -> PreprocessConfig:
    return PreprocessConfig.from_dict(spec.get("preprocess"))
