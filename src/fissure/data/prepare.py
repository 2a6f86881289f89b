"""Deterministic train/val/test splits for both models, from synthetic and real sources.

Output (everything under OUT is rewritten on each run; nothing else is touched)::

    OUT/segment/{train,val,test}/images/<id>.jpg + masks/<id>.png   (0/255)
    OUT/classify/{train,val,test}/{crack,no_crack}/<id>_y<Y>_x<X>.jpg   (patches), or
    OUT/classify/{train,val,test}/<class>/<id>.jpg   (class-folder sources: N classes)
    OUT/manifest.json   counts per split and class, sources, seed, params, content hash

Sources (``prepare.source``): ``synth``, folders in the segmentation layout (images/ + masks/)
and folders of classes (``<class>/`` or ``images/<class>/``), each a string or a mapping with its
own split fractions or role (:class:`SourceSpec`). Classification patches are cut from the
segmentation split they belong to, so a patch never shares an image with a patch or image of
another split; class-folder images are split per class. Each source is split separately by
sorting its item ids on a seeded hash, so every source is represented in every split and
adding images to a source moves few existing ones. Feedback (user corrections) goes to train.

The classifier's classes follow from the sources: without class-folder sources, or when their
folders are only ``crack`` and ``no_crack`` (or known names for them, ``Negative``/``Positive``:
:func:`fissure.data.loaders.crack_classes`), classify/ holds crack/no_crack (patches, plus those
folders); otherwise classify/ holds the class folders' classes alone (an N-class defect
classifier, e.g. the magnetic-tile set's blowhole ... free) and no patches are cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Union

import numpy as np
import yaml
from PIL import Image
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from fissure.data import synth
from fissure.data.loaders import (
    IMAGE_SUFFIXES,
    NEGATIVE_NAMES,
    SegmentationItem,
    class_root,
    classification_set,
    crack_classes,
    segmentation_items,
    source_layout,
    source_tag,
    split_hint,
)
from fissure.data.patches import PatchSpec, extract_patches
from fissure.errors import DataError, UsageError
from fissure.preprocess import load_image, load_mask
from fissure.progress import iterate

SPLITS = ("train", "val", "test")


SYNTH = "synth"
BINARY_CLASSES = ("crack", "no_crack")  # the patches' classes
ROLES = ("split", "train", "val", "test")


class SourceSpec(BaseModel):
    """One entry of ``prepare.source`` in its mapping form (a plain string is ``{path: ...}``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str = Field(min_length=1)  # 'synth' or a folder (relative to the working directory)
    # auto: images/ + masks/ is a segmentation source, <class>/ or images/<class>/ a class-folder one
    layout: Literal["auto", "segment", "classes"] = "auto"
    # split: by the fractions; train/val/test: the whole source goes to that split (test: held back)
    role: Literal["split", "train", "val", "test"] = "split"
    val_fraction: float | None = Field(None, ge=0, lt=1)  # None: prepare.val_fraction
    test_fraction: float | None = Field(None, ge=0, lt=1)  # None: prepare.test_fraction

    @model_validator(mode="after")
    def _consistent(self) -> "SourceSpec":
        if self.role != "split" and (self.val_fraction is not None or self.test_fraction is not None):
            raise ValueError(f"role {self.role} puts the whole source in {self.role}; "
                             "val_fraction/test_fraction are for role: split")
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 1:
            raise ValueError("val_fraction + test_fraction must leave something to train on")
        if self.path == SYNTH and self.layout == "classes":
            raise ValueError("synth is a segmentation source (layout: segment or auto)")
        return self


@dataclass(frozen=True)
class Source:
    """A source with the section's defaults filled in."""

    path: str
    layout: str  # auto | segment | classes (auto is resolved when the folder is read)
    role: str
    val_fraction: float
    test_fraction: float

    @property
    def synth(self) -> bool:
        return self.path == SYNTH


def _source_kind(value) -> str:
    return "mapping" if isinstance(value, (dict, SourceSpec)) else "folder"


SourceItem = Annotated[Union[Annotated[str, Tag("folder")], Annotated[SourceSpec, Tag("mapping")]],
                       Discriminator(_source_kind)]


class PrepareParams(BaseModel):
    """The ``prepare:`` section of params.yaml (see docs/data.md); fields not given keep these defaults."""

    # strict: YAML already gives typed values, so a string for a number is a mistake to report
    model_config = ConfigDict(extra="forbid", strict=True)

    # a single string is one source; each entry a string or a SourceSpec mapping
    source: list[SourceItem] = Field(default_factory=lambda: [SYNTH])
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
        if isinstance(value, (str, os.PathLike, dict)):
            value = [value]
        if isinstance(value, list):
            value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "PrepareParams":
        if not self.source:
            raise ValueError("source is empty; use 'synth' and/or folders with images/ and masks/")
        sources = self.sources()
        if any(s.synth for s in sources) and self.count < 1:
            raise ValueError(f"count must be at least 1 when source includes synth (got {self.count})")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave something to train on")
        for i, s in enumerate(sources):
            if s.role == "split" and s.val_fraction + s.test_fraction >= 1:
                raise ValueError(f"source[{i}] ({s.path}): its val_fraction + test_fraction must leave "
                                 "something to train on")
        seen: dict = {}  # the folder itself, so data/cf and ./data/cf/ are one source (not split twice)
        for s in sources:
            key = s.path if s.synth else Path(s.path).resolve()
            if key in seen:
                also = "" if seen[key] == s.path else f" (also as {seen[key]})"
                raise ValueError(f"source {s.path} is listed twice{also}")
            seen[key] = s.path
        if all(s.role in ("val", "test") for s in sources):
            raise ValueError("every source is held back (role: val or test); at least one must train")
        return self

    def sources(self) -> list[Source]:
        """Each source as a :class:`Source`, the section's fractions filling in what it leaves out."""
        out = []
        for item in self.source:
            spec = SourceSpec(path=item) if isinstance(item, str) else item
            out.append(Source(
                path=spec.path, layout=spec.layout, role=spec.role,
                val_fraction=self.val_fraction if spec.val_fraction is None else spec.val_fraction,
                test_fraction=self.test_fraction if spec.test_fraction is None else spec.test_fraction))
        return out

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
        errors = exc.errors()
        # a typo'd key says more than the "Field required" it causes
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = _key_of(err["loc"])
        if err["type"] == "extra_forbidden":
            known = SourceSpec.model_fields if key.startswith("source[") else KEYS
            msg = f"unknown key; known keys: {', '.join(known)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if where is None:
            option = key.split("[", 1)[0]
            raise UsageError(f"--{option.replace('_', '-')}: {msg}" if key else msg) from None
        raise DataError(f"{where}.{key}: {msg}" if key else f"{where}: {msg}") from None


def _key_of(loc: tuple) -> str:
    """``('source', 1, 'mapping', 'val_fraction')`` -> ``source[1].val_fraction``; a plain source's
    index is noise (``source``), and so are the union's tags (folder, mapping)."""
    if not loc:
        return ""
    key, rest = str(loc[0]), [p for p in loc[1:] if p not in ("folder", "mapping")]
    if key == "source" and len(loc) > 2 and loc[2] == "mapping":
        return f"source[{rest[0]}]" + "".join(f".{p}" for p in rest[1:])
    return key


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


def _split_of(ids: list[str], seed: int, val: float, test: float, role: str = "split") -> dict[str, str]:
    """Exact-fraction split of ids, ordered by a seeded hash (stable across machines); a role
    other than ``split`` puts every id in that split."""
    if role != "split":
        return dict.fromkeys(ids, role)
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


def _fit(img: Image.Image, mask: np.ndarray | None, max_side: int) -> tuple[Image.Image, np.ndarray | None]:
    w, h = img.size
    if max(w, h) <= max_side:
        return img, mask
    scale = max_side / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.LANCZOS)
    if mask is None:
        return img, None
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
    segmentation ``images/<id>`` + ``masks/<id>``; classification ``images/<class>/`` (or ``<class>/``),
    each with its class folder's name."""
    images = fb / "images"
    seg = segmentation_items(fb) if (fb / "masks").is_dir() and any(p.is_file() for p in _visible(images)) else []
    class_dir = images if images.is_dir() else fb
    cls = [(p, d.name) for d in sorted(_visible(class_dir)) if d.is_dir() and d.name != "masks"
           for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not seg and not cls:
        raise DataError(f"{fb}: no feedback items (expected images/ + masks/, images/<class>/ or <class>/)")
    return seg, cls


@dataclass
class _Plan:
    source: Source
    kind: str  # synth | segment | classes
    tag: str
    ids: list[str]
    items: list = None  # SegmentationItem (segment) or (path, class name) (classes)


def _plan(source: Source, params: PrepareParams, taken: set[str]) -> _Plan:
    """What a source holds, read (not decoded) before anything is written: a bad folder fails fast."""
    if source.synth:
        return _Plan(source, "synth", SYNTH, [f"synth-{params.seed}-{i:06d}" for i in range(params.count)])
    # a held-back source (role val or test) may hold one class, e.g. a positives-only test split
    min_classes = 1 if source.role in ("val", "test") else 2
    layout = source_layout(source.path, min_classes) if source.layout == "auto" else source.layout
    if layout == "segment":
        items = segmentation_items(source.path)
        tag = source_tag(source.path, taken)
        return _Plan(source, "segment", tag, [f"{tag}-{it.image.stem}" for it in items], items)
    root = class_root(source.path, min_classes)
    if root is None:
        raise DataError(split_hint(source.path)
                        or f"{source.path}: layout classes needs <class>/ folders or images/<class>/ folders")
    cset = classification_set(root, min_classes=min_classes)
    tag = source_tag(source.path, taken)
    items = [(path, cset.classes[k]) for path, k in cset.items]
    ids = [f"{tag}-{path.stem}" for path, _ in items]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1).removeprefix(tag + "-")
        raise DataError(f"{source.path}: two images with the file stem {dupe} (an image id is its stem, "
                        "and an image belongs to one class)")
    return _Plan(source, "classes", tag, ids, items)


def _class_order(names) -> list[str]:
    """Negative names first (index 0), then alphabetical, as :func:`classification_set` orders them."""
    return sorted(set(names), key=lambda c: (c.lower() not in NEGATIVE_NAMES, c))


def dvc_dep_warnings(params: PrepareParams, env: dict | None = None) -> list[str]:
    """Under ``dvc repro`` (DVC sets DVC_ROOT and DVC_STAGE): the folder sources that dvc.yaml's
    prepare stage does not list under ``deps``, so a change to their files would not re-run it."""
    env = os.environ if env is None else env
    root = env.get("DVC_ROOT")
    if not root or not env.get("DVC_STAGE") or not (Path(root) / "dvc.yaml").is_file():
        return []
    try:
        stages = yaml.safe_load((Path(root) / "dvc.yaml").read_text()).get("stages", {})
        deps = stages[env["DVC_STAGE"].split(":")[-1]].get("deps", [])
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return []
    listed = [(Path(root) / d).resolve() for d in deps if isinstance(d, str)]
    warnings = []
    for s in params.sources():
        if s.synth:
            continue
        where = Path(s.path).resolve()
        if not any(where == d or d in where.parents for d in listed):
            warnings.append(f"warning: {s.path} is not among the deps of dvc.yaml's {env['DVC_STAGE']} stage: "
                            "changes to its files will not re-run it (add the folder to its deps)")
    return warnings


def _check_held_back_classes(plans) -> None:
    """A held-back source (role val or test) may only test classes a training source teaches: a
    class no image trains would silently make the classifier one class wider."""
    def names(p):
        return {n for _, n in p.items} if p.kind == "classes" else set()

    training = [p for p in plans if p.source.role in ("split", "train")]
    trained = set().union(*(names(p) for p in training))
    all_classes = set().union(*(names(p) for p in plans))
    # crack/no_crack patches are cut from the training images of synth and segmentation sources
    if all_classes <= set(BINARY_CLASSES) and any(p.kind != "classes" for p in training):
        trained |= set(BINARY_CLASSES)
    for p in plans:
        missing = names(p) - trained if p.source.role in ("val", "test") else set()
        if missing:
            raise DataError(f"{p.source.path}: holds class(es) {', '.join(sorted(missing))}, which no training "
                            f"source has (they train {', '.join(sorted(trained)) or 'no classes'})")


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
    taken: set[str] = {SYNTH}
    plans = [_plan(source, params, taken) for source in params.sources()]
    # class folders named as a crack / no-crack set (Negative/Positive, free/crack, ...) are crack/no_crack
    as_crack = crack_classes({name for p in plans if p.kind == "classes" for _, name in p.items}) or {}
    if any(name != cls for name, cls in as_crack.items()):
        log("classify: class folders " + ", ".join(f"{n} -> {c}" for n, c in sorted(as_crack.items()) if n != c)
            + " (known negative and positive names)")
        for p in plans:
            if p.kind == "classes":
                p.items = [(path, as_crack[name]) for path, name in p.items]
    _check_held_back_classes(plans)
    folder_classes = sorted({name for p in plans if p.kind == "classes" for _, name in p.items})
    # crack/no_crack folders join the patches; any other class names make an N-class set of their own
    patches = not folder_classes or set(folder_classes) <= set(BINARY_CLASSES)
    classes = list(BINARY_CLASSES[::-1]) if patches else _class_order(folder_classes)
    feedback_seg, feedback_cls = [], []  # (image, mask) items; (image, class)
    if params.feedback:
        fb = Path(params.feedback)
        if not fb.exists():
            log(f"feedback: {fb} not found, skipped")
        elif not [p for p in _visible(fb) if p.name != "manifest.json"]:
            # a .gitkeep alone keeps the DVC dependency; an export of no judged items is its manifest alone
            log(f"feedback: {fb} holds no items, skipped")
        else:
            feedback_seg, feedback_cls = _feedback_items(fb)
            if patches:  # a binary model's corrections: any positive name is a crack
                feedback_cls = [(p, "no_crack" if c.lower() in NEGATIVE_NAMES else "crack") for p, c in feedback_cls]
            else:
                other = sorted({c for _, c in feedback_cls if c not in classes})
                if other:
                    log(f"feedback: class folders {other} are not among the classes {classes}, skipped")
                feedback_cls = [(p, c) for p, c in feedback_cls if c in classes]
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
    for plan in plans:
        src = plan.source
        if plan.kind == "classes":  # stratified: each class split on its own
            split_of = {}
            for name in sorted({c for _, c in plan.items}):
                ids = [i for i, (_, c) in zip(plan.ids, plan.items) if c == name]
                split_of.update(_split_of(ids, params.seed, src.val_fraction, src.test_fraction, src.role))
        else:
            split_of = _split_of(plan.ids, params.seed, src.val_fraction, src.test_fraction, src.role)
        for k, name in iterate(enumerate(plan.ids), f"prepare {plan.tag}", len(plan.ids), unit="images",
                               enabled=progress):
            if plan.kind == "synth":
                sample = synth.render(synth.image_rng(params.seed, k), params.size)
                _write_pair(out / "segment" / split_of[name], name, sample.jpeg_bytes(), sample.mask)
            elif plan.kind == "segment":
                jpeg, mask = _ingest_real(plan.items[k], params.max_side)
                _write_pair(out / "segment" / split_of[name], name, jpeg, mask)
            else:
                path, cls = plan.items[k]
                target = out / "classify" / split_of[name] / cls
                target.mkdir(parents=True, exist_ok=True)
                (target / f"{name}.jpg").write_bytes(_jpeg(_fit(load_image(path), None, params.max_side)[0]))
        per_split = {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS}
        info = {"source": src.path, "kind": "real" if plan.kind == "segment" else plan.kind,
                "layout": "classes" if plan.kind == "classes" else "segment", "role": src.role,
                "images": len(plan.ids), "splits": per_split}
        if src.role == "split":
            info.update(val_fraction=src.val_fraction, test_fraction=src.test_fraction)
        if plan.kind == "classes":
            info["classes"] = {c: sum(1 for _, n in plan.items if n == c) for c in _class_order(n for _, n in plan.items)}
        sources.append(info)
        role = "" if src.role == "split" else f" (role {src.role})"
        log(f"{src.path}: {len(plan.ids)} images{role} -> " + ", ".join(f"{s} {n}" for s, n in per_split.items()))

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
    seg_sources = any(p.kind != "classes" for p in plans)
    if not patches and seg_sources:
        log(f"classify: {len(classes)} classes from class folders ({', '.join(classes)}); no crack/no_crack "
            "patches are cut from the segmentation sources")
    for i, split in enumerate(SPLITS):
        seg = out / "segment" / split
        n = len(list((seg / "images").iterdir()))
        counts["segment"][split] = n
        if n == 0:  # e.g. val_fraction 0: no folder at all, so trainers split val off train
            shutil.rmtree(seg)
            continue
        if not patches:
            continue
        got = extract_patches(seg, out / "classify" / split, params.patch_spec(params.seed * 1000 + i),
                              progress=progress)
        log(f"patches: {split} {got['crack']} crack, {got['no_crack']} no_crack")
        if params.patch_balance and got["crack"] != got["no_crack"]:
            log(f"warning: {split} has {got['crack']} crack and {got['no_crack']} no_crack patches "
                "(one class had none to balance with; more images or smaller patches help)")
    if not seg_sources:
        log("segment: no segmentation source (synth or images/ + masks/ folders): segment/ is empty")
    if not any((out / "segment").iterdir()):
        shutil.rmtree(out / "segment")

    for path, name in feedback_cls:
        (out / "classify" / "train" / name).mkdir(parents=True, exist_ok=True)
        load_image(path).save(out / "classify" / "train" / name / f"feedback-{path.stem}.jpg",
                              format="JPEG", quality=95)

    for split in SPLITS:
        counts["classify"][split] = {c: len(list((out / "classify" / split / c).iterdir()))
                                     if (out / "classify" / split / c).is_dir() else 0
                                     for c in classes}
    if not patches:
        missing = [c for c in classes if counts["classify"]["train"][c] == 0]
        if missing:
            log(f"warning: no training images of {', '.join(missing)} (every class needs some in train)")
    files = [p for p in (out / "segment").rglob("*") if p.is_file()]
    files += [p for p in (out / "classify").rglob("*") if p.is_file()]
    manifest = {
        "version": 1,
        "seed": params.seed,
        "params": params.model_dump(),
        "sources": sources,
        "feedback": feedback_info,
        "classify": {"classes": classes, "from": "patches" if patches else "class folders"},
        "counts": counts,
        "files": len(files),
        "content_hash": content_hash(out, files),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    seg_total = sum(counts["segment"].values())
    cls_total = sum(sum(v.values()) for v in counts["classify"].values())
    log(f"prepared {seg_total} segmentation images and {cls_total} classification "
        f"{'patches' if patches else 'images'} in {out}")
    return manifest
