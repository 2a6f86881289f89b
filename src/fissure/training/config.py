"""Training hyper-parameters: one dataclass per run, read from a ``params.yaml`` section.

The defaults here equal the ``train_classifier:`` / ``train_segmenter:`` sections of the
repository's ``params.yaml`` so that ``fissure train`` without ``--params`` trains the same
model as ``dvc repro``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fissure.errors import FissureError

PARAMS_SECTION = {"classify": "train_classifier", "segment": "train_segmenter"}


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without improvement of the validation metric before stopping
    min_epochs: int = 0  # never stop before this many epochs
    min_delta: float = 1e-4
    size: int = 224  # the model's input size (saved in the spec's preprocess config)
    crop: int = 0  # segment: train on random crops of this size of the resized image (0 = off)
    crack_bias: float = 0.0  # segment: share of crops centred on a random crack pixel
    pos_weight: float = 1.0  # segment: BCE weight of crack pixels (>1 trades precision for recall)
    hard_negatives: float = 0.0  # segment: share of training crops with a drawn joint or sealant band
    extra_cracks: float = 0.0  # segment: share of training crops with one more drawn crack (often wide)
    aux_weight: float = 0.0  # segment: weight of the deep-supervision loss (needs model.deep_supervision)
    ema: float = 0.0  # decay of the weights' moving average that is validated and kept (0 = off)
    threshold: float | None = None  # segment: mask threshold saved with the model; None = best val Dice
    augment: bool = True
    val_fraction: float = 0.15  # only used when --data is a single folder without splits
    test_fraction: float = 0.15
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all CPUs this process may use
    eval_batch_size: int = 0  # 0 = batch_size
    model: dict = field(default_factory=dict)  # architecture params (width/blocks or base/depth)

    def to_dict(self) -> dict:
        return asdict(self)

    def params_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


DEFAULTS = {
    "classify": dict(
        epochs=12, batch_size=64, lr=3e-3, patience=4, size=96, model={"width": 16, "blocks": 1, "dropout": 0.1}
    ),
    "segment": dict(
        epochs=40, batch_size=8, lr=4e-3, patience=8, min_epochs=25, size=256, crop=128, crack_bias=0.5,
        hard_negatives=0.6, extra_cracks=0.3, aux_weight=0.5, ema=0.99, eval_batch_size=8,
        model={"base": 8, "depth": 4, "norm": "group", "deep_supervision": True},
    ),
}


def default_config(task: str) -> TrainConfig:
    return TrainConfig(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS[task].items()})


def load_config(task: str, params: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults for ``task``, updated by the task's section of ``params`` and then ``overrides``."""
    cfg = default_config(task).to_dict()
    if params is not None:
        section = read_params(params).get(PARAMS_SECTION[task]) or {}
        if not isinstance(section, dict):
            raise FissureError(f"{params}: section {PARAMS_SECTION[task]!r} must be a mapping")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise FissureError(
                f"{params}: unknown key(s) {unknown} in {PARAMS_SECTION[task]!r}; known: {sorted(known)}"
            )
        for key, value in section.items():
            if key == "model":
                cfg["model"] = {**cfg["model"], **(value or {})}
            else:
                cfg[key] = value
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    out = TrainConfig(**cfg)
    if out.epochs < 1:
        raise FissureError(f"epochs must be >= 1, got {out.epochs}")
    if out.batch_size < 1:
        raise FissureError(f"batch_size must be >= 1, got {out.batch_size}")
    if out.crop and (out.crop > out.size or out.crop % 16):
        raise FissureError(f"crop {out.crop} must be a multiple of 16 and <= size {out.size}")
    return out


def read_params(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FissureError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FissureError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FissureError(f"{path}: expected a mapping of sections")
    return data
