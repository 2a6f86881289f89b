"""Dataset layouts users have, read into plain lists of files.

- classification: ``ROOT/<class>/*.{jpg,png,...}`` (e.g. crack/no_crack or Positive/Negative
  folders), or ``ROOT/images/<class>/*`` (the shared magnetic-tile layout, masks/<class>/ beside it)
- segmentation:   ``ROOT/images/<stem>.*`` + ``ROOT/masks/<stem>.*`` (any nonzero mask pixel
  is a defect)

Only file discovery and validation live here; decoding is :mod:`fissure.preprocess`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fissure.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# crack patches' mask tiles, <class root>/.masks/crack/<patch stem>.png (fissure.data.patches):
# training fades the crack they show; a hidden folder, so it is never read as a class
PATCH_MASKS = ".masks"


def patch_mask(patch: Path) -> Path:
    """Where the mask tile of the patch ``ROOT/<class>/<stem>.jpg`` lives (it may not exist)."""
    return patch.parent.parent / PATCH_MASKS / patch.parent.name / f"{patch.stem}.png"


def source_tag(path: str, taken: set[str]) -> str:
    """The prefix ``fissure data prepare`` gives the files of a real source folder (so evaluation
    can tell which dataset an item came from): the folder's last two path parts, made file-name
    safe, numbered when already in ``taken`` (which it joins)."""
    parts = [p for p in Path(path).resolve().parts if p not in ("/", "")][-2:]
    tag = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(parts)).strip("-.") or "src"
    base, k = tag, 2
    while tag in taken:
        tag, k = f"{base}{k}", k + 1
    taken.add(tag)
    return tag


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


@dataclass(frozen=True)
class SegmentationItem:
    image: Path
    mask: Path


def listing(names: list[str], n: int = 3) -> str:
    """The first ``n`` names, comma-joined, and how many more (error messages)."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def segmentation_items(root: str | Path) -> list[SegmentationItem]:
    """Pairs of (image, mask) by stem; every image must have a mask and every mask an image."""
    root = _require_dir(Path(root))
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{root}: a segmentation set needs images/ and masks/ folders")
    images = _images_in(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    masks = {p.stem: p for p in _images_in(masks_dir)}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{masks_dir}: no mask for {listing(missing)} (masks match images by file stem)")
    stems = {p.stem for p in images}
    orphans = [p.name for p in masks.values() if p.stem not in stems and not p.name.startswith(".")]
    if orphans:  # as `fissure data import` does: a mask whose image is missing is a mistake, not noise
        raise DataError(f"{images_dir}: no image for the mask(s) {listing(orphans)} in {masks_dir}")
    return [SegmentationItem(p, masks[p.stem]) for p in images]


@dataclass(frozen=True)
class ClassificationSet:
    classes: list[str]
    items: list[tuple[Path, int]]


# Folder names that mean "defect" / "no defect" in public datasets; used to order classes so
# that index 1 is always the positive (crack) class for binary metrics.
NEGATIVE_NAMES = {"negative", "no_crack", "nocrack", "free", "good", "ok", "normal", "background", "0"}
# Folder names that mean "crack" in public crack classification sets (METU's Positive/Negative, ...).
POSITIVE_NAMES = {"positive", "crack", "cracks", "cracked", "1"}


def _crack_kind(name: str) -> str | None:
    low = name.lower()
    return "no_crack" if low in NEGATIVE_NAMES else "crack" if low in POSITIVE_NAMES else None


def crack_classes(names) -> dict[str, str] | None:
    """``{name: "no_crack" | "crack"}`` when every name is a known negative (:data:`NEGATIVE_NAMES`)
    or positive (:data:`POSITIVE_NAMES`) name, in any case: a crack / no-crack set under other folder
    names (``Negative``/``Positive``, ``free``/``crack``, ``0``/``1``); None otherwise (e.g. the
    magnetic-tile set's defect classes)."""
    kinds = {name: _crack_kind(name) for name in names}
    return kinds if kinds and None not in kinds.values() else None


def _class_of_folder(found: list[str], classes: list[str]) -> dict[str, str]:
    """Each folder's class: its own name, or for a crack/no-crack model (``classes`` one known
    negative and one known positive name) a folder of a known name of the same kind, so that
    ``Negative``/``Positive`` folders evaluate a ``no_crack``/``crack`` model and vice versa."""
    model = crack_classes(classes) if len(classes) == 2 else None
    binary = model is not None and set(model.values()) == {"no_crack", "crack"}
    out = {}
    for c in found:
        if c in classes:
            out[c] = c
        elif binary and _crack_kind(c) is not None:
            out[c] = next(k for k in classes if model[k] == _crack_kind(c))
    return out


def classification_set(root: str | Path, classes: list[str] | None = None, min_classes: int = 2) -> ClassificationSet:
    """Images under ``ROOT/<class>/``. Binary sets put the negative class first. With ``classes``
    (a model's), a folder must be one of them, or for a crack/no-crack model a known negative or
    positive name (:func:`crack_classes`). ``min_classes``: 1 for a held-back set of one class."""
    root = _require_dir(Path(root))
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"{root}: a classification set needs one folder per class (e.g. crack/, no_crack/)")
    if classes is None:
        classes = sorted(found, key=lambda c: (c.lower() not in NEGATIVE_NAMES, c))
    class_of = _class_of_folder(found, classes)
    unknown = [c for c in found if c not in class_of]
    if unknown:
        raise DataError(f"{root}: class folders {unknown} are not among the model's classes {classes}")
    items = [(p, classes.index(class_of[c])) for c in found for p in _images_in(root / c)]
    if not items:
        raise DataError(f"{root}: class folders {found} hold no images")
    if len(classes) < min_classes:
        raise DataError(f"{root}: found one class ({classes[0]}); need at least two")
    return ClassificationSet(classes=list(classes), items=items)


def class_root(root: str | Path, min_classes: int = 2) -> Path | None:
    """The folder holding the class folders of ``root``: ``root/images`` when it holds
    ``<class>/`` subfolders and no image files (``images/<class>/``), else ``root`` itself when
    it holds at least ``min_classes`` (two; one for a held-back set) visible subfolders with
    images and no ``images/`` folder; None when ``root`` is not in a class-folder layout."""
    root = Path(root)
    images = root / "images"
    if images.is_dir():
        subdirs = [d for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if subdirs and not _images_in(images):
            return images
        return None
    if not root.is_dir():
        return None
    with_images = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _images_in(d)]
    return root if len(with_images) >= min_classes else None


SPLIT_NAMES = ("train", "val", "valid", "validation", "test")  # split folders, as `fissure data import` writes them


def split_hint(root: str | Path) -> str | None:
    """For a folder of split folders (``root/train``, ``root/test``, ... as ``fissure data import``
    writes them), a one-line message saying how to list them as ``prepare`` sources; else None."""
    root = Path(root)
    splits = sorted((d.name for d in root.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES),
                    key=lambda n: SPLIT_NAMES.index(n.lower())) if root.is_dir() else []
    if not splits:
        return None
    entries = [f"{root / s}" if s.lower() == "train" else
               f"{{path: {root / s}, role: {'test' if s.lower() == 'test' else 'val'}}}" for s in splits]
    return (f"{root}: holds the splits {', '.join(s + '/' for s in splits)}, not one dataset: list each split as a "
            f"source of prepare.source in params.yaml: {' and '.join(entries)}")


def source_layout(root: str | Path, min_classes: int = 2) -> str:
    """'segment' (``images/`` + ``masks/`` with image files) or 'classes' (:func:`class_root`);
    anything else is a :class:`DataError` that says which layouts are read (or, for a folder of
    split folders, how to list them: :func:`split_hint`)."""
    root = _require_dir(Path(root))
    if class_root(root, min_classes) is not None:
        return "classes"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "segment"
    raise DataError(split_hint(root) or f"{root}: not a dataset folder: a segmentation set needs images/ and masks/ "
                    "folders, a classification set <class>/ or images/<class>/ folders")


def detect_task(root: str | Path) -> str:
    """'segment' for images/+masks/, else 'classify'."""
    root = _require_dir(Path(root))
    return "segment" if (root / "images").is_dir() and (root / "masks").is_dir() else "classify"
