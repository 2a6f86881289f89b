"""``fissure data import``: public dataset layouts -> the layouts of docs/data.md.

A download becomes a source for ``prepare`` (or ``train``) in one command. Formats:

- ``crackforest``: images (``image/``, ``images/``, ``img/`` or the folder itself) and ground
  truth in ``groundTruth/`` as CrackForest's ``.mat`` files (``groundTruth{1}.Segmentation``:
  1 background, 2 crack) or already converted masks (``gt/``, ``mask(s)/``, ``label(s)/``,
  ``groundTruth/``; 0/255, 0/1, or 1/2 as in the ``.mat``), paired by file stem.
  Writes ``DST/images`` + ``DST/masks``.
- ``deepcrack``: ``<split>_img/`` + ``<split>_lab/`` folders (``train_img``, ``train_lab``,
  ``test_img``, ``test_lab``) in SRC or one folder below it; labels ``.png``/``.bmp``/``.jpg``,
  0/255 or 0/1. Writes ``DST/<split>/images`` + ``DST/<split>/masks``.
- ``folder-of-classes``: ``SRC/<class>/*`` or ``SRC/images/<class>/*`` (images may sit in
  subfolders of a class, as in the magnetic-tile set's ``MT_<Class>/Imgs/``, whose ``.png``
  masks beside the ``.jpg`` images are skipped and whose ``MT_`` prefix is dropped), or
  ``SRC/<split>/<class>/*`` when the top folders are ``train``/``val``/``test``. Writes
  ``DST/<class>/`` (``DST/<split>/<class>/``).
- ``images-masks``: ``SRC/images`` + ``SRC/masks`` (also ``img``/``image``/``imgs`` and
  ``mask``/``labels``/``label``/``gt``/``groundtruth``), paired by path below them and file stem
  (a mask may add ``_mask``, ``_gt``, ``_label`` or ``_lab``); subfolders become part of the id
  (``images/crack/a.jpg`` -> ``crack-a``). When SRC has no images folder but subfolders that
  do (``SRC/train/images``, ...), each is a split. Writes ``DST/images`` + ``DST/masks``
  (``DST/<split>/...``).

Images are checked (decoded) and copied byte for byte; masks are written as 8-bit PNG,
0 background and 255 crack (a mask whose values are all 0 or 1 marks 1; any other mask marks
pixels >= 128, so JPEG noise in an old label does not become crack). Every problem (an empty
source, an image without a mask or a mask without an image, an unreadable file, a mask of
another size) is a :class:`DataError`, before or while writing.

Re-runs are idempotent: a file whose bytes would not change is not rewritten. DST belongs to the
import: files in it that this run did not write (left by an earlier import of a source that has
since lost images) are removed, dotfiles and dot-folders aside. DST holds ``import.json`` (format,
source, ``complete``, counts, files); a DST that is not empty and has no ``import.json`` is
refused, so an import never deletes files in a folder it did not make.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fissure.data.loaders import IMAGE_SUFFIXES, SPLIT_NAMES, listing
from fissure.errors import DataError, InputError
from fissure.preprocess import decode_image, open_image
from fissure.progress import Progress

ALL = "all"  # the group of a segmentation import without splits
FORMATS = ("crackforest", "deepcrack", "folder-of-classes", "images-masks")
MANIFEST = "import.json"
IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "groundtruth", "ground_truth", "annotations")
MASK_TAGS = ("_mask", "-mask", "_gt", "_label", "_lab")
# Imports this large show progress lines in logs and pipes (a live bar on a terminal always).
PROGRESS_LINES_FROM = 50


@dataclass
class Item:
    """One output: an image (copied), and for segmentation its mask from a file or a .mat."""

    image: Path
    out: str  # the image's path in DST, relative, with its suffix
    group: str  # split or ALL (segmentation); "class" or "split/class" (classification)
    mask: Path | None = None
    mask_out: str | None = None
    mask_rule: str = "binary"  # "binary" or "crackforest" (values 1/2)


@dataclass
class ImportResult:
    format: str
    source: str
    dest: str
    task: str  # "segment" or "classify"
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    written: int = 0
    unchanged: int = 0
    removed: int = 0

    def summary(self) -> list[str]:
        """What was written: a headline, then one line per split (segmentation) or class."""
        lines = []
        for group, c in self.counts.items():
            where = Path(self.dest) / ("" if group == ALL else group)
            if self.task == "segment":
                lines.append(f"  {group}: {c['images']} images ({c['with_crack']} with crack) -> "
                             f"{where / 'images'}, {where / 'masks'}")
            else:
                lines.append(f"  {group}: {c['images']} images -> {where}")
        total = sum(c["images"] for c in self.counts.values())
        head = (f"imported {total} {'image/mask pairs' if self.task == 'segment' else 'images'} "
                f"({self.format}) from {self.source} to {self.dest}: {self.written} files written, "
                f"{self.unchanged} unchanged, {self.removed} stale removed")
        return [head] + lines


# --------------------------------------------------------------------------- discovery


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name != "__MACOSX") if folder.is_dir() else []


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    if not recursive:
        return [p for p in _visible(folder) if _is_image(p)]
    return sorted(p for p in folder.rglob("*") if _is_image(p)
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts))


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {p.name.lower(): p for p in _visible(root) if p.is_dir()}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _id_of(rel: Path) -> str:
    """``crack/a.jpg`` -> ``crack-a``: subfolders become part of the id."""
    parts = list(rel.parent.parts) + [rel.stem]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-") or "image"


def _mask_key(rel: Path) -> str:
    stem = rel.stem
    for tag in MASK_TAGS:
        if stem.lower().endswith(tag) and len(stem) > len(tag):
            stem = stem[: -len(tag)]
            break
    return (rel.parent / stem).as_posix()


def _pair(images_dir: Path, masks_dir: Path, group: str, out_prefix: str, *, mask_rule: str = "binary",
          mask_suffixes: set[str] | None = None, recursive: bool = True) -> list[Item]:
    """Items for images paired with masks by relative path and stem; mismatches are errors."""
    images = _images_in(images_dir, recursive)
    if not images:
        raise DataError(f"{images_dir}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    suffixes = mask_suffixes or IMAGE_SUFFIXES
    masks: dict[str, Path] = {}
    candidates = (masks_dir.rglob("*") if recursive else masks_dir.iterdir()) if masks_dir.is_dir() else []
    for p in sorted(candidates):
        rel = p.relative_to(masks_dir)
        if p.is_file() and p.suffix.lower() in suffixes and not any(s.startswith(".") for s in rel.parts):
            key = _mask_key(rel)
            if key in masks:
                raise DataError(f"{masks_dir}: two masks for one image: {masks[key].name} and {p.name}")
            masks[key] = p
    items, seen, missing = [], {}, []
    for img in images:
        rel = img.relative_to(images_dir)
        key = rel.with_suffix("").as_posix()
        ident = _id_of(rel)
        if ident in seen:
            raise DataError(f"{images_dir}: two images with the id {ident}: {seen[ident].name} and {img.name}")
        seen[ident] = img
        mask = masks.pop(key, None)
        if mask is None:
            missing.append(rel.as_posix())
            continue
        items.append(Item(img, f"{out_prefix}images/{ident}{img.suffix.lower()}", group, mask,
                          f"{out_prefix}masks/{ident}.png", mask_rule))
    if missing:
        raise DataError(f"{masks_dir}: no mask for {listing(missing)} (masks match images by file stem)")
    if masks:
        orphans = [p.relative_to(masks_dir).as_posix() for p in masks.values()]
        raise DataError(f"{images_dir}: no image for the mask(s) {listing(orphans)} in {masks_dir}")
    return items


def _plan_crackforest(src: Path) -> list[Item]:
    images_dir = _find_dir(src, IMAGE_DIRS) or src
    gt_dir = _find_dir(src, ("groundtruth",) + MASK_DIRS) or src
    if not _images_in(images_dir):
        raise DataError(f"{src}: no CrackForest images (looked in image/, images/, img/ and the folder itself)")
    mats = sorted(p for p in gt_dir.iterdir() if p.is_file() and p.suffix.lower() == ".mat"
                  and not p.name.startswith("."))
    if mats:
        return _pair(images_dir, gt_dir, ALL, "", mask_rule="crackforest", mask_suffixes={".mat"}, recursive=False)
    if gt_dir == images_dir:
        raise DataError(f"{src}: no CrackForest ground truth (groundTruth/*.mat, or masks in gt/, masks/, labels/)")
    return _pair(images_dir, gt_dir, ALL, "", mask_rule="crackforest", recursive=False)


def _plan_deepcrack(src: Path) -> list[Item]:
    roots = [src] + [p for p in _visible(src) if p.is_dir()]
    for root in roots:
        dirs = {p.name.lower(): p for p in _visible(root) if p.is_dir()}
        splits = sorted(n[: -len("_img")] for n in dirs if n.endswith("_img"))
        if splits:
            break
    else:
        raise DataError(f"{src}: no DeepCrack folders (train_img/ + train_lab/, test_img/ + test_lab/)")
    items = []
    for split in splits:
        lab = dirs.get(f"{split}_lab") or dirs.get(f"{split}_label") or dirs.get(f"{split}_gt")
        if lab is None:
            raise DataError(f"{root}: {dirs[split + '_img'].name}/ has no labels folder ({split}_lab/)")
        items += _pair(dirs[f"{split}_img"], lab, split, f"{split}/", recursive=False)
    orphan = sorted(n for n in dirs if n.endswith("_lab") and n[: -len("_lab")] not in splits)
    if orphan:
        raise DataError(f"{root}: {orphan[0]}/ has no images folder ({orphan[0][:-4]}_img/)")
    return items


def _class_name(folder: Path) -> str:
    name = folder.name
    return name[3:].lower() if name.startswith("MT_") and len(name) > 3 else name


def _class_images(folder: Path) -> list[Path]:
    images = _images_in(folder, recursive=True)
    # the magnetic-tile layout keeps each defect's .png mask beside its .jpg image
    stems = {(p.parent, p.stem) for p in images if p.suffix.lower() != ".png"}
    return [p for p in images if not (p.suffix.lower() == ".png" and (p.parent, p.stem) in stems)]


def _plan_classes(src: Path) -> list[Item]:
    root = src
    images_dir = _find_dir(src, ("images",))
    if images_dir is not None and not _images_in(images_dir) and any(p.is_dir() for p in _visible(images_dir)):
        root = images_dir
    subdirs = [p for p in _visible(root) if p.is_dir() and p.name.lower() not in ("masks", "mask")]
    if subdirs and all(p.name.lower() in SPLIT_NAMES for p in subdirs):
        groups = [(f"{s.name}/", [c for c in _visible(s) if c.is_dir()]) for s in subdirs]
    else:
        groups = [("", subdirs)]
    items, all_classes = [], set()
    for prefix, class_dirs in groups:
        where = root / prefix if prefix else root
        if not class_dirs:
            raise DataError(f"{where}: no class folders (expected <class>/ with images, e.g. crack/, no_crack/)")
        found = {}
        for d in class_dirs:
            images = _class_images(d)
            if images:
                found.setdefault(_class_name(d), []).append((d, images))
        # a held-back split (val/, test/) may hold one class, e.g. positives only; one to train on needs two
        need = 1 if prefix and prefix.rstrip("/").lower() != "train" else 2
        if len(found) < need:
            names = ", ".join(f"{d.name}/" for d in class_dirs)
            wanted = "two class folders" if need == 2 else "one class folder"
            raise DataError(f"{where}: need images in at least {wanted}; found {names or 'none'}"
                            f" ({len(found)} with images)")
        all_classes |= set(found)
        for cls, sources in sorted(found.items()):
            seen: dict[str, Path] = {}
            stems: dict[str, int] = {}
            for _, images in sources:
                for img in images:
                    stems[img.stem] = stems.get(img.stem, 0) + 1
            for d, images in sources:
                for img in images:
                    # the file's stem; with its subfolders when the stem is not unique in the class
                    ident = img.stem if stems[img.stem] == 1 else _id_of(img.relative_to(d))
                    if ident in seen:
                        raise DataError(f"{d}: two images with the id {ident} in class {cls}: "
                                        f"{seen[ident]} and {img}")
                    seen[ident] = img
                    items.append(Item(img, f"{prefix}{cls}/{ident}{img.suffix.lower()}", f"{prefix}{cls}"))
    if len(all_classes) < 2:
        raise DataError(f"{root}: need images in at least two class folders; found one class "
                        f"({', '.join(sorted(all_classes))}) in every split")
    return items


def _plan_images_masks(src: Path) -> list[Item]:
    images_dir, masks_dir = _find_dir(src, IMAGE_DIRS), _find_dir(src, MASK_DIRS)
    if images_dir is not None:
        if masks_dir is None:
            raise DataError(f"{src}: {images_dir.name}/ has no masks folder beside it (masks/)")
        return _pair(images_dir, masks_dir, ALL, "")
    splits = [p for p in _visible(src) if p.is_dir() and _find_dir(p, IMAGE_DIRS) and _find_dir(p, MASK_DIRS)]
    if not splits:
        raise DataError(f"{src}: an images-masks source needs images/ and masks/ folders "
                        "(or <split>/images/ + <split>/masks/)")
    items = []
    for s in splits:
        items += _pair(_find_dir(s, IMAGE_DIRS), _find_dir(s, MASK_DIRS), s.name, f"{s.name}/")
    return items


PLANNERS = {"crackforest": _plan_crackforest, "deepcrack": _plan_deepcrack,
            "folder-of-classes": _plan_classes, "images-masks": _plan_images_masks}


# --------------------------------------------------------------------------- conversion


def _mat_segmentation(path: Path) -> np.ndarray:
    """``groundTruth{1}.Segmentation`` of a CrackForest .mat file (1 background, 2 crack)."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError ... on bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable .mat file: {reason}") from None
    if "groundTruth" not in data:
        keys = [k for k in data if not k.startswith("__")]
        raise DataError(f"{path}: no groundTruth variable (has {', '.join(keys) or 'none'})")
    value = data["groundTruth"]
    for _ in range(10):  # cell -> struct -> field -> array, however scipy nested them
        if isinstance(value, (np.ndarray, np.void)) and value.dtype.names:
            if "Segmentation" not in value.dtype.names:
                raise DataError(f"{path}: groundTruth has no Segmentation field ({', '.join(value.dtype.names)})")
            value = value["Segmentation"]
        elif isinstance(value, np.ndarray) and value.dtype == object:
            if value.size == 0:
                break
            value = value.flat[0]
        elif isinstance(value, np.ndarray) and value.size == 1 and value.ndim > 0 and value.dtype.names:
            value = value.flat[0]
        else:
            break
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "uifb":
        raise DataError(f"{path}: groundTruth Segmentation is not a 2-D label image")
    return value == 2


def _mask_pixels(path: Path, rule: str) -> np.ndarray:
    if path.suffix.lower() == ".mat":
        return _mat_segmentation(path)
    try:
        with open_image(_read(path)) as img:
            img.load()
            if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "La"):
                arr = np.asarray(img.convert("RGB")).max(axis=2)
            elif img.mode == "P" and set(np.unique(np.asarray(img)).tolist()) <= {0, 1}:
                arr = np.asarray(img)  # a two-entry palette: the index is the label
            elif img.mode.startswith("I"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("L"))
    except (InputError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable mask: {exc}") from None
    values = np.unique(arr)
    if rule == "crackforest" and values.size and values.min() >= 1 and values.max() <= 2:
        return arr == 2
    if values.size and values.max() <= 1:
        return arr == 1
    return arr >= 128


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- main entry


def _check_places(src: Path, dst: Path) -> None:
    if not src.exists():
        raise DataError(f"{src}: no such folder")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    if not _visible(src):
        raise DataError(f"{src}: empty folder")
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise DataError(f"{dst}: the destination must be outside the source {src} (and not contain it)")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and _visible(dst) and not (dst / MANIFEST).is_file():
        raise DataError(f"{dst}: not empty and not written by fissure data import (no {MANIFEST}); "
                        "choose a new or empty folder")


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False


def _write_if_changed(path: Path, data: bytes) -> bool:
    if _same(path, data):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _write_manifest(dst: Path, content: dict) -> None:
    _write_if_changed(dst / MANIFEST, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())


def import_dataset(fmt: str, src: str | os.PathLike, dst: str | os.PathLike,
                   progress: bool | None = None) -> ImportResult:
    """Convert the dataset at ``src`` in layout ``fmt`` into ``dst``; see the module docstring.

    ``progress`` as ``enabled`` of :class:`fissure.progress.Progress`; plain progress lines are
    only printed for imports of at least ``PROGRESS_LINES_FROM`` images.
    """
    if fmt not in PLANNERS:
        raise DataError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    src, dst = Path(src), Path(dst)
    _check_places(src, dst)
    items = PLANNERS[fmt](src)
    if not items:
        raise DataError(f"{src}: nothing to import")
    task = "classify" if fmt == "folder-of-classes" else "segment"
    result = ImportResult(fmt, str(src), str(dst), task)
    result.counts = {g: {"images": 0, "with_crack": 0} if task == "segment" else {"images": 0}
                     for g in sorted({it.group for it in items})}

    dst.mkdir(parents=True, exist_ok=True)
    marked = False

    def mark() -> None:
        """Before the first change to DST: import.json says an import is under way, so a failed
        import can be re-run into DST (and a reader sees it is incomplete)."""
        nonlocal marked
        if not marked:
            _write_manifest(dst, {"format": fmt, "source": str(src), "complete": False, "task": task})
            marked = True

    written: set[str] = {MANIFEST}
    enabled = progress if (progress is not True or len(items) >= PROGRESS_LINES_FROM) else None
    with Progress(f"import {fmt}", len(items), unit="images", enabled=enabled) as bar:
        for item in items:
            data = _read(item.image)
            try:
                image = decode_image(data)  # decodes every pixel: unreadable files fail here
            except InputError as exc:
                raise DataError(f"{item.image}: {exc}") from None
            count = result.counts[item.group]
            count["images"] += 1
            outputs = [(item.out, data)]
            if item.mask is not None:
                mask = _mask_pixels(item.mask, item.mask_rule)
                if mask.shape != (image.height, image.width):
                    raise DataError(f"{item.image}: image is {image.width}x{image.height} but its mask "
                                    f"{item.mask.name} is {mask.shape[1]}x{mask.shape[0]}")
                count["with_crack"] += int(mask.any())
                outputs.append((item.mask_out, _png(mask)))
            for rel, data in outputs:
                if _same(dst / rel, data):
                    result.unchanged += 1
                else:
                    mark()
                    _write_if_changed(dst / rel, data)
                    result.written += 1
                written.add(rel)
            bar.advance()

    # files of an earlier import into DST that this one did not write
    # (dotfiles such as .gitkeep and anything in dot-folders are left alone)
    for path in sorted(dst.rglob("*"), reverse=True):  # children before their folders
        rel = path.relative_to(dst)
        if any(part.startswith(".") for part in rel.parts) or path.is_symlink():
            continue
        if path.is_file() and rel.as_posix() not in written:
            mark()
            path.unlink()
            result.removed += 1
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    _write_manifest(dst, {"format": fmt, "source": str(src), "complete": True, "task": task,
                          "counts": result.counts, "files": sorted(written - {MANIFEST})})
    return result
