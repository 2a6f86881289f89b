"""Training hyper-parameters: one validated model per run, read from a ``params.yaml`` section.

The defaults here equal the ``train_classifier:`` / ``train_segmenter:`` sections of the
repository's ``params.yaml`` so that ``fissure train`` without ``--params`` trains the same
model as ``dvc repro``. Each section, and its ``model:`` mapping, is a pydantic model: an
unknown key or a value of the wrong type is one line that names the file and the key
(``params.yaml: train_segmenter.epochs: Input should be a valid integer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fissure.errors import DataError, UsageError

PARAMS_SECTION = {"classify": "train_classifier", "segment": "train_segmenter"}

# strict: YAML already gives typed values, so "10" (a string) for an integer is a mistake to report.
_STRICT = ConfigDict(extra="forbid", strict=True)
_SHARE = dict(ge=0.0, le=1.0)
# the training contrast jitter's factor range (the segmenter's default floor is lower: DEFAULTS)
CONTRAST = (0.75, 1.25)


class TrainConfig(BaseModel):
    """A ``train_classifier:`` / ``train_segmenter:`` section (fields not given keep these defaults)."""

    model_config = _STRICT

    seed: int = Field(0, ge=0)
    # scratch: new weights; champion: fine-tune from the registered champion's weights (same
    # architecture required; without a champion it trains from scratch and says so)
    init: Literal["scratch", "champion"] = "scratch"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=0)  # epochs without improvement of the validation metric before stopping
    min_epochs: int = Field(0, ge=0)  # never stop before this many epochs
    min_delta: float = Field(1e-4, ge=0)
    size: int = Field(224, ge=16)  # the model's input size (saved in the spec's preprocess config)
    crop: int = Field(0, ge=0)  # segment: train on random crops of this size of the resized image (0 = off)
    crack_bias: float = Field(0.0, **_SHARE)  # segment: share of crops centred on a random crack pixel
    pos_weight: float = Field(1.0, gt=0)  # segment: BCE weight of crack pixels (>1 trades precision for recall)
    hard_negatives: float = Field(0.0, **_SHARE)  # segment: share of training crops with a drawn joint or sealant band
    extra_cracks: float = Field(0.0, **_SHARE)  # segment: share of training crops with one more drawn crack (often wide)
    aux_weight: float = Field(0.0, ge=0)  # segment: weight of the deep-supervision loss (needs model.deep_supervision)
    ema: float = Field(0.0, ge=0, lt=1)  # decay of the weights' moving average that is validated and kept (0 = off)
    threshold: float | None = Field(None, gt=0, lt=1)  # segment: mask threshold saved with the model; None = best val Dice
    # segment, threshold None: the validation images it is tuned on. real: the real (non-synthetic)
    # sources' images pooled, the whole split when there are none; all: the whole split, synthetic included
    threshold_from: Literal["real", "all"] = "real"
    # segment: hysteresis (fissure.models.masks): pixels at or above this are crack too where they
    # connect to a pixel at or above the threshold; saved in the spec. None (or >= the threshold): off
    threshold_low: float | None = Field(None, gt=0, lt=1)
    # segment: the validation images the best epoch (kept weights, early stopping) is chosen on, by
    # their Dice at 0.5: real, all (as threshold_from), or None = whatever threshold_from says
    select_on: Literal["real", "all"] | None = None
    # segment: fewer real validation images than this and threshold_from / select_on real use the
    # whole split (a handful of images must not set the threshold or pick the epoch)
    min_real_val_images: int = Field(10, ge=0)
    # segment: the best epoch's score on those images: dice (at 0.5) or tuned_dice (at the threshold
    # it would ship with: the fixed one, else the best in 0.2-0.8, tuned again each epoch)
    select_metric: Literal["dice", "tuned_dice"] = "dice"
    augment: bool = True
    # training images' contrast is scaled by a factor drawn from [low, high] (80 % of images, with
    # flips, turns and a brightness shift): a low floor shows the model faint cracks on dull surfaces
    contrast: list[float] = Field(default_factory=lambda: list(CONTRAST), min_length=2, max_length=2)
    # each image, in training and wherever the model is used (saved in its spec's preprocess), is
    # stretched about its mean to this grey-level standard deviation (0-255; factor held to 1/4-4)
    # after the resize to the model's size (tile mode: the working-size image); 0 = off
    gray_std: float = Field(0.0, ge=0, le=128)
    # segment: each training crop is cut from a window of crop x s pixels, s drawn from [low, high],
    # and resized to the crop: cracks seen up to 1/low times wider and 1/high times thinner than
    # in the images ([1, 1]: off)
    scale: list[float] = Field(default_factory=lambda: [1.0, 1.0], min_length=2, max_length=2)
    # half the training images with a crack and its mask (segmenter crops; classify: crack patches
    # with the mask tile `fissure data prepare` writes) get that crack faded toward the surface
    # around it, keeping a share of its depth drawn from [low, high] and its texture: faint cracks
    # on a textured surface, which global contrast jitter cannot make ([1, 1]: off)
    fade: list[float] = Field(default_factory=lambda: [1.0, 1.0], min_length=2, max_length=2)
    # segment: weight of the skeleton-recall term (the soft recall of the masks' centre lines,
    # fissure.training.loop.skeleton_recall_loss) added to BCE + Dice; 0: off
    skeleton_weight: float = Field(0.0, ge=0)
    # half the training images each get a Gaussian blur of sigma up to `blur` px and grain (noise
    # per pixel) of standard deviation up to `noise` grey levels (0-255), drawn uniformly: soft
    # focus and coarse surfaces other cameras show (0: off)
    blur: float = Field(0.0, ge=0, le=8)
    noise: float = Field(0.0, ge=0, le=64)
    # inference views averaged, saved in the spec (fissure.models.tta): none, flips (4 passes) or d8
    # (8: flips and quarter turns); validation scores the model that way too
    tta: Literal["none", "flips", "d8"] = "none"
    # classify: cross-entropy weight of each class from its training count n_c: inverse (N / (K n_c)),
    # sqrt_inverse (its square root: milder, less of the common class's recall traded away) or none
    class_weights: Literal["inverse", "sqrt_inverse", "none"] = "inverse"
    val_fraction: float = Field(0.15, ge=0, lt=1)  # only used when --data is a single folder without splits
    test_fraction: float = Field(0.15, ge=0, lt=1)
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = all CPUs this process may use
    eval_batch_size: int = Field(0, ge=0)  # 0 = batch_size
    model: dict = Field(default_factory=dict)  # architecture params: ClassifierArch / SegmenterArch keys
    # how the saved model sees images larger than its input, written to its spec (serving, `fissure
    # evaluate`, the test split): fissure.models.tiling.TilingConfig keys (mode: tile = native
    # resolution in overlapping tiles, tile, overlap, max_pixels, batch); None = resized whole
    tiling: dict | None = None

    @model_validator(mode="after")
    def _tiling_valid(self) -> "TrainConfig":
        if self.tiling is not None:
            from fissure.models.tiling import TilingConfig

            try:
                data = {"tile": self.size, **self.tiling}
                if isinstance(data["tile"], int):  # the spec's default overlap (fissure.models.tiling_config)
                    data.setdefault("overlap", min(TilingConfig.model_fields["overlap"].default, data["tile"] // 4))
                TilingConfig(**data)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err.get("loc", ()))
                raise ValueError(f"tiling{'.' + where if where else ''}: "
                                 f"{err['msg'].removeprefix('Value error, ')}") from None
        return self

    @model_validator(mode="after")
    def _ranges(self) -> "TrainConfig":
        for name in ("contrast", "scale"):  # augmentation factor ranges
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} {getattr(self, name)} must be [low, high] with 0 < low <= high")
        low, high = self.fade
        if not 0 <= low <= high <= 1:
            raise ValueError(f"fade {self.fade} must be [low, high] with 0 <= low <= high <= 1")
        return self

    @model_validator(mode="after")
    def _crop_fits(self) -> "TrainConfig":
        if self.crop and (self.crop > self.size or self.crop % 16):
            raise ValueError(f"crop {self.crop} must be a multiple of 16 and <= size {self.size}")
        return self

    def selection_mode(self) -> str:
        """segment: the validation images the best epoch is chosen on (``select_on``, else ``threshold_from``)."""
        return self.select_on or self.threshold_from

    def to_dict(self) -> dict:
        return self.model_dump()


# ``encoder``: a pretrained backbone from fissure.models.encoders, or none (the from-scratch model)
Encoder = Literal["none", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


class ClassifierArch(BaseModel):
    """``train_classifier.model``: the arguments of :class:`fissure.models.classifier.CrackClassifier`
    (``encoder: none``), or of :class:`~fissure.models.classifier.EncoderClassifier`."""

    model_config = _STRICT

    encoder: Encoder = "none"
    pretrained: bool = True  # with an encoder: start from its ImageNet weights
    width: int = Field(16, ge=1)  # from scratch only
    blocks: int = Field(1, ge=1)  # from scratch only
    dropout: float = Field(0.1, ge=0, lt=1)


class SegmenterArch(BaseModel):
    """``train_segmenter.model``: the arguments of :class:`fissure.models.segmenter.AttentionUNet`
    (``encoder: none``), or of :class:`~fissure.models.segmenter.EncoderAttentionUNet`."""

    model_config = _STRICT

    encoder: Encoder = "none"
    pretrained: bool = True  # with an encoder: start from its ImageNet weights
    base: int = Field(16, ge=1)  # decoder width at full resolution (doubling per level)
    depth: int = Field(4, ge=1)  # from scratch only (an encoder fixes five levels)
    norm: Literal["batch", "group"] = "batch"  # segmenter.NORMS
    deep_supervision: bool = False


ARCH = {"classify": ClassifierArch, "segment": SegmenterArch}

DEFAULTS = {
    "classify": dict(
        epochs=12, batch_size=64, lr=3e-3, patience=4, size=96, model={"width": 16, "blocks": 1, "dropout": 0.1}
    ),
    "segment": dict(
        epochs=18, batch_size=8, lr=4e-3, patience=8, min_epochs=12, size=256, crop=128, crack_bias=0.5,
        hard_negatives=0.6, extra_cracks=0.3, aux_weight=0.5, ema=0.99, eval_batch_size=8, contrast=[0.25, 1.25],
        threshold_low=0.25, model={"encoder": "efficientnet-lite0", "pretrained": True, "base": 8, "depth": 4, "norm": "group",
               "deep_supervision": True},
    ),
}


def default_config(task: str) -> TrainConfig:
    return TrainConfig(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS[task].items()})


def load_config(task: str, params: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults for ``task``, updated by the task's section of ``params`` and then ``overrides``.

    A bad key or value in ``params`` raises :class:`DataError` naming the file and the key; a
    bad override (a command-line option: ``batch_size`` is ``--batch-size``) raises :class:`UsageError`.
    """
    name = PARAMS_SECTION[task]
    cfg = default_config(task).to_dict()
    if params is not None:
        section = read_params(params).get(name) or {}
        if not isinstance(section, dict):
            raise DataError(f"{params}: {name} must be a mapping of keys")
        model = section.get("model") or {}
        if not isinstance(model, dict):
            raise DataError(f"{params}: {name}.model must be a mapping of keys")
        cfg.update(section, model={**cfg["model"], **model})
        _validated(task, cfg, f"{params}: {name}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return _validated(task, cfg, None)


def _validated(task: str, cfg: dict, section: str | None) -> TrainConfig:
    """``cfg`` as a TrainConfig, its ``model`` checked against the task's architecture.

    ``section`` names where ``cfg`` came from (``params.yaml: train_segmenter``), for a
    :class:`DataError`; None means the values are command-line options, for a :class:`UsageError`.
    """
    try:
        out = TrainConfig(**cfg)
        arch = ARCH[task](**out.model)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        if loc and exc.title != TrainConfig.__name__:
            loc.insert(0, "model")
        if err["type"] == "extra_forbidden":
            known = ARCH[task].model_fields if loc[0] == "model" else TrainConfig.model_fields
            msg = f"unknown key; known keys: {', '.join(known)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        key = ".".join(loc)
        if section is None:
            raise UsageError(f"--{key.replace('_', '-')}: {msg}" if key else msg) from None
        raise DataError(f"{section}.{key}: {msg}" if key else f"{section}: {msg}") from None
    if task == "segment" and out.aux_weight > 0 and not arch.deep_supervision:
        # refused here, before training opens an MLflow run it would leave FAILED
        msg = "aux_weight > 0 needs model.deep_supervision: true (or aux_weight: 0)"
        raise UsageError(msg) if section is None else DataError(f"{section}.aux_weight: {msg}")
    return out


def read_params(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of sections")
    return data
