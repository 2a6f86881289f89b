"""Deterministic train/val/test splits for both models, from synthetic and real sources.

Output (everything under OUT is rewritten on each run; nothing else is touched)::

    OUT/segment/{train,val,test}/images/<id>.jpg + masks/<id>.png   (0/255)
    OUT/classify/{train,val,test}/{crack,no_crack}/<id>_y<Y>_x<X>.jpg
    OUT/manifest.json   counts per split and class, sources, seed, params, content hash

Classification patches are cut from the segmentation split they belong to, so a patch never
shares an image with a patch or image of another split. Each source is split separately by
sorting its item ids on a seeded hash, so every source is represented in every split and
adding images to a source moves few existing ones. Feedback (user corrections) goes to train.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fissure.data import synth
from fissure.data.loaders import (
    IMAGE_SUFFIXES,
    NEGATIVE_NAMES,
    SegmentationItem,
    segmentation_items,
)
from fissure.data.patches import PatchSpec, extract_patches
from fissure.errors import DataError, UsageError
from fissure.preprocess import load_image, load_mask
from fissure.progress import iterate

SPLITS = ("train", "val", "test")


class PrepareParams(BaseModel):
    """The ``prepare:`` section of params.yaml (see docs/data.md); fields not given keep these defaults."""

    # strict: YAML already gives typed values, so a string for a number is a mistake to report
    model_config = ConfigDict(extra="forbid", strict=True)

    source: list[str] = Field(default_factory=lambda: ["synth"])  # a single string is one source
    count: int = Field(400, ge=0)  # synthetic images: at least 1 when source includes synth
    seed: int = Field(0, ge=0)  # numpy's generators refuse negative seeds
    size: int = Field(256, ge=32, le=4096)
    max_side: int = Field(512, ge=32)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    feedback: str | None = "data/feedback"
    patch_size: int = Field(96, ge=8)
    patch_stride: int = Field(80, ge=1)
    patch_threshold: float = Field(0.01, gt=0, lt=1)
    patch_margin: int = Field(8, ge=0)
    patch_balance: bool = True
    patch_max_per_class: int | None = Field(None, ge=1)

    @field_validator("source", mode="before")
    @classmethod
    def _as_list(cls, value):
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if isinstance(value, list):
            value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "PrepareParams":
        if not self.source:
            raise ValueError("source is empty; use 'synth' and/or folders with images/ and masks/")
        if "synth" in self.source and self.count < 1:
            raise ValueError(f"count must be at least 1 when source includes synth (got {self.count})")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave something to train on")
        return self

    def patch_spec(self, seed: int) -> PatchSpec:
        return PatchSpec(size=self.patch_size, stride=self.patch_stride, threshold=self.patch_threshold,
                         margin=self.patch_margin, balance=self.patch_balance, seed=seed,
                         max_per_class=self.patch_max_per_class, strict_balance=False)


KEYS = tuple(PrepareParams.model_fields)


def make_params(section: dict | None = None, **overrides) -> PrepareParams:
    """Params from a ``prepare:`` mapping, with non-None overrides on top.

    A bad key or value in ``section`` raises :class:`DataError` (``prepare.count: ...``); a bad
    override (a command-line option: ``max_side`` is ``--max-side``) raises :class:`UsageError`.
    """
    data = dict(section or {})
    params = _validated(data, "prepare")
    given = {k: v for k, v in overrides.items() if v is not None}
    return _validated({**data, **given}, None) if given else params


def _validated(data: dict, where: str | None) -> PrepareParams:
    """``data`` as PrepareParams; an error names ``where`` the values came from
    (``params.yaml: prepare``, for a :class:`DataError`) or, when None, the command-line option."""
    try:
        return PrepareParams(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"][:1])  # a source's index is noise: source
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; known keys: {', '.join(KEYS)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if where is None:
            raise UsageError(f"--{key.replace('_', '-')}: {msg}" if key else msg) from None
        raise DataError(f"{where}.{key}: {msg}" if key else f"{where}: {msg}") from None


def load_params(path: str | os.PathLike) -> dict:
    """The ``prepare:`` section of a YAML file, checked: a bad key or value is a :class:`DataError`
    naming the file and the key (``params.yaml: prepare.count: Input should be a valid integer``)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such params file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise DataError(f"{path}: invalid YAML{line}") from None
    if not isinstance(doc, dict) or "prepare" not in doc:
        raise DataError(f"{path}: no 'prepare:' section")
    section = doc["prepare"]
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise DataError(f"{path}: 'prepare:' must be a mapping of keys ({', '.join(KEYS)})")
    _validated(section, f"{path}: prepare")
    return section


# --------------------------------------------------------------------------- helpers


def _split_of(ids: list[str], seed: int, val: float, test: float) -> dict[str, str]:
    """Exact-fraction split of ids, ordered by a seeded hash (stable across machines)."""
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n = len(order)
    n_test, n_val = round(n * test), round(n * val)
    if n >= 3:
        n_test = max(n_test, 1 if test > 0 else 0)
        n_val = max(n_val, 1 if val > 0 else 0)
    n_test, n_val = min(n_test, n - 1), min(n_val, max(0, n - 1 - n_test))
    out = {}
    for k, i in enumerate(order):
        out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def _tag(path: str, taken: set[str]) -> str:
    parts = [p for p in Path(path).resolve().parts if p not in ("/", "")][-2:]
    tag = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(parts)).strip("-.") or "src"
    base, k = tag, 2
    while tag in taken:
        tag, k = f"{base}{k}", k + 1
    taken.add(tag)
    return tag


def _fit(img: Image.Image, mask: np.ndarray, max_side: int) -> tuple[Image.Image, np.ndarray]:
    w, h = img.size
    if max(w, h) <= max_side:
        return img, mask
    scale = max_side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.LANCZOS)
    # area-resize the mask and keep pixels at least 1/4 covered, so thin cracks survive
    m = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((nw, nh), Image.BOX)
    return img, np.asarray(m) >= 64


def _write_pair(root: Path, name: str, jpeg: bytes, mask: np.ndarray) -> None:
    (root / "images" / f"{name}.jpg").write_bytes(jpeg)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(root / "masks" / f"{name}.png", format="PNG")


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _ingest_real(item: SegmentationItem, max_side: int) -> tuple[bytes, np.ndarray]:
    img = load_image(item.image)
    mask = load_mask(item.mask)
    if mask.ndim != 2 or mask.shape != (img.height, img.width):
        raise DataError(f"{item.image}: image is {img.width}x{img.height} but its mask {item.mask.name} "
                        f"is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]}")
    img, mask = _fit(img, mask, max_side)
    return _jpeg(img), mask


def content_hash(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- main entry


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []


def _feedback_items(fb: Path) -> tuple[list[SegmentationItem], list[tuple[Path, str]]]:
    """The feedback folder's items, in either layout or both (`fissure feedback export` writes both):
    segmentation ``images/<id>`` + ``masks/<id>``; classification ``images/<class>/`` (or ``<class>/``)."""
    images = fb / "images"
    seg = segmentation_items(fb) if (fb / "masks").is_dir() and any(p.is_file() for p in _visible(images)) else []
    class_root = images if images.is_dir() else fb
    cls = [(p, "no_crack" if d.name.lower() in NEGATIVE_NAMES else "crack")
           for d in sorted(_visible(class_root)) if d.is_dir() and d.name != "masks"
           for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not seg and not cls:
        raise DataError(f"{fb}: no feedback items (expected images/ + masks/, images/<class>/ or <class>/)")
    return seg, cls


def prepare(params: PrepareParams, out: str | os.PathLike, progress: bool | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Build OUT/segment, OUT/classify and OUT/manifest.json; return the manifest.

    ``progress`` as ``enabled`` of :class:`fissure.progress.Progress` (None: a bar on a terminal only).
    """
    log = log or (lambda msg: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")

    # Resolve every source before writing anything, so a bad folder fails fast.
    plans = []  # (kind, tag, payload, ids)
    taken: set[str] = set()
    for src in params.source:
        if src == "synth":
            ids = [f"synth-{params.seed}-{i:06d}" for i in range(params.count)]
            plans.append(("synth", "synth", None, ids, src))
        else:
            items = segmentation_items(src)
            tag = _tag(src, taken)
            ids = [f"{tag}-{it.image.stem}" for it in items]
            plans.append(("real", tag, items, ids, src))
    feedback_seg, feedback_cls = [], []  # (image, mask) items; (image, "crack"|"no_crack")
    if params.feedback:
        fb = Path(params.feedback)
        if not fb.exists():
            log(f"feedback: {fb} not found, skipped")
        elif not [p for p in _visible(fb) if p.name != "manifest.json"]:
            # a .gitkeep alone keeps the DVC dependency; an export of no judged items is its manifest alone
            log(f"feedback: {fb} holds no items, skipped")
        else:
            feedback_seg, feedback_cls = _feedback_items(fb)
            log(f"feedback: {len(feedback_seg)} segment and {len(feedback_cls)} classify items from {fb} "
                "(train split)")

    for sub in ("segment", "classify"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "manifest.json").unlink(missing_ok=True)
    for split in SPLITS:
        for d in ("images", "masks"):
            (out / "segment" / split / d).mkdir(parents=True, exist_ok=True)

    sources = []
    for kind, tag, items, ids, src in plans:
        split_of = _split_of(ids, params.seed, params.val_fraction, params.test_fraction)
        for k, name in iterate(enumerate(ids), f"prepare {tag}", len(ids), unit="images", enabled=progress):
            root = out / "segment" / split_of[name]
            if kind == "synth":
                sample = synth.render(synth.image_rng(params.seed, k), params.size)
                _write_pair(root, name, sample.jpeg_bytes(), sample.mask)
            else:
                jpeg, mask = _ingest_real(items[k], params.max_side)
                _write_pair(root, name, jpeg, mask)
        per_split = {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS}
        sources.append({"source": src, "kind": kind, "images": len(ids), "splits": per_split})
        log(f"{src}: {len(ids)} images -> " + ", ".join(f"{s} {n}" for s, n in per_split.items()))

    feedback_info = None
    if feedback_seg or feedback_cls:
        root = out / "segment" / "train"
        for item in feedback_seg:
            jpeg, mask = _ingest_real(item, params.max_side)
            _write_pair(root, f"feedback-{item.image.stem}", jpeg, mask)
        layout = "+".join(kind for kind, items in (("segment", feedback_seg), ("classify", feedback_cls)) if items)
        feedback_info = {"source": str(params.feedback), "layout": layout,
                         "items": len(feedback_seg) + len(feedback_cls)}

    counts: dict = {"segment": {}, "classify": {}}
    for i, split in enumerate(SPLITS):
        seg = out / "segment" / split
        n = len(list((seg / "images").iterdir()))
        counts["segment"][split] = n
        cls_dir = out / "classify" / split
        if n == 0:  # e.g. val_fraction 0: no folder at all, so trainers split val off train
            shutil.rmtree(seg)
            continue
        got = extract_patches(seg, cls_dir, params.patch_spec(params.seed * 1000 + i), progress=progress)
        log(f"patches: {split} {got['crack']} crack, {got['no_crack']} no_crack")
        if params.patch_balance and got["crack"] != got["no_crack"]:
            log(f"warning: {split} has {got['crack']} crack and {got['no_crack']} no_crack patches "
                "(one class had none to balance with; more images or smaller patches help)")

    for path, name in feedback_cls:
        (out / "classify" / "train" / name).mkdir(parents=True, exist_ok=True)
        load_image(path).save(out / "classify" / "train" / name / f"feedback-{path.stem}.jpg",
                              format="JPEG", quality=95)

    for split in SPLITS:
        counts["classify"][split] = {c: len(list((out / "classify" / split / c).iterdir()))
                                     if (out / "classify" / split / c).is_dir() else 0
                                     for c in ("crack", "no_crack")}
    files = [p for p in (out / "segment").rglob("*") if p.is_file()]
    files += [p for p in (out / "classify").rglob("*") if p.is_file()]
    manifest = {
        "version": 1,
        "seed": params.seed,
        "params": params.model_dump(),
        "sources": sources,
        "feedback": feedback_info,
        "counts": counts,
        "files": len(files),
        "content_hash": content_hash(out, files),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    seg_total = sum(counts["segment"].values())
    cls_total = sum(sum(v.values()) for v in counts["classify"].values())
    log(f"prepared {seg_total} segmentation images and {cls_total} classification patches in {out}")
    return manifest
