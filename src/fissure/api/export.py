"""The feedback export: judged items in the dataset layouts ``fissure data prepare`` reads.

One folder (``fissure feedback export --out data/feedback``) or one zip (``GET
/feedback/export``) holding, for every judged prediction (its latest feedback wins when several
people judged it; one item per image and task, the latest judgement):

    images/<class>/<stem>.<ext>     classification: the image under its right class
                                    (the predicted label when judged correct, the corrected one
                                    when wrong; a binary model's other class when no label was given)
    images/<stem>.<ext>             segmentation: the image ...
    masks/<stem>.png                ... and its right mask, 0/255 (the corrected mask when one was
                                    sent, else the predicted one when judged correct)
    manifest.json                   every item (paths, prediction and feedback ids, hashes, model
                                    name/version/run, verdict, who, when) and what was skipped, why

``<stem>`` is the first 16 hex digits of the image's sha256. ``images/`` is the segmentation
layout of :func:`fissure.data.loaders.segmentation_items` for the root, and its class folders the
classification layout of :func:`fissure.data.loaders.classification_set` for ``images/``. The
bytes depend only on the store's content: entries sorted, zip times fixed, no clock in the
manifest (``as_of`` is the newest judgement), so DVC sees a change only when feedback changed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fissure.api.store import Store

FORMAT = "fissure-feedback-export/1"
OUTPUTS = ("images", "masks", "manifest.json")  # what an export owns in its folder
_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/tiff": ".tif", "image/webp": ".webp"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
SAFE_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str  # a blob of the store


def other_class(classes: list[str], label: str) -> str | None:
    rest = [c for c in classes if c != label]
    return rest[0] if len(classes) == 2 and len(rest) == 1 else None


def plan(store: Store) -> tuple[list[Entry], dict]:
    """What the export holds: the blob entries (sorted by path) and the manifest."""
    chosen: dict[tuple[str, str], tuple] = {}
    for pred, fb in store.judged():
        key = (pred.task, pred.image_sha256)
        if key not in chosen or (fb.updated_at, fb.id) > (chosen[key][1].updated_at, chosen[key][1].id):
            chosen[key] = (pred, fb)
    entries: list[Entry] = []
    items, skipped = [], []
    for (task, sha), (pred, fb) in sorted(chosen.items()):
        stem = sha[:16]
        ext = _EXT.get(pred.image_media_type)
        record = {"prediction_id": pred.id, "feedback_id": fb.id, "task": task, "image_sha256": sha,
                  "model_name": pred.model_name, "model_version": pred.model_version,
                  "mlflow_run_id": pred.mlflow_run_id, "verdict": fb.verdict, "user": fb.user,
                  "judged_at": fb.updated_at.isoformat(), "note": fb.note}
        if ext is None:  # no file name the data loaders read: said, not written under a name they skip
            skipped.append({**record, "reason": f"image type {pred.image_media_type} has no file extension the data loaders read"})
            continue
        if task == "classify":
            predicted = pred.output.get("label")
            classes = sorted(pred.output.get("probabilities") or {})
            label = predicted if fb.verdict == "correct" else (fb.label or other_class(classes, predicted))
            if not label:
                skipped.append({**record, "reason": "judged wrong without the right label"})
                continue
            if not SAFE_LABEL.match(label):
                skipped.append({**record, "reason": f"label {label!r} is not usable as a folder name"})
                continue
            path = f"images/{label}/{stem}{ext}"
            entries.append(Entry(path, sha))
            items.append({**record, "path": path, "label": label, "mask": None, "mask_sha256": None})
        else:
            mask = fb.mask_sha256 or (pred.mask_sha256 if fb.verdict == "correct" else None)
            if not mask:
                skipped.append({**record, "reason": "judged wrong without a corrected mask"})
                continue
            path, mask_path = f"images/{stem}{ext}", f"masks/{stem}.png"
            entries += [Entry(path, sha), Entry(mask_path, mask)]
            items.append({**record, "path": path, "label": None, "mask": mask_path, "mask_sha256": mask})
    items.sort(key=lambda r: r["path"])
    skipped.sort(key=lambda r: (r["task"], r["image_sha256"]))
    judged_at = [r["judged_at"] for r in items + skipped]
    manifest = {
        "format": FORMAT,
        "as_of": max(judged_at) if judged_at else None,
        "counts": {
            "classify": {c: sum(1 for r in items if r["label"] == c) for c in sorted({r["label"] for r in items
                                                                                     if r["label"]})},
            "segment": sum(1 for r in items if r["task"] == "segment"),
            "skipped": len(skipped),
        },
        "items": items,
        "skipped": skipped,
    }
    return sorted(entries, key=lambda e: e.path), manifest


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_zip(store: Store, out) -> dict:
    """Write the export as a zip to a binary file object; returns the manifest."""
    entries, manifest = plan(store)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for path, data in [(e.path, store.blobs.get(e.sha256)) for e in entries] + [
                ("manifest.json", manifest_bytes(manifest))]:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the host
            zf.writestr(info, data)
    return manifest


def zip_bytes(store: Store) -> bytes:
    buf = io.BytesIO()
    write_zip(store, buf)
    return buf.getvalue()


def write_folder(store: Store, out: str | os.PathLike) -> dict:
    """Write the export into ``out`` (created), replacing a previous export's images/, masks/ and
    manifest.json; anything else there (a .gitkeep) stays. Built beside and swapped in."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, manifest = plan(store)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        for entry in entries:
            target = staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.blobs.get(entry.sha256))
        (staging / "manifest.json").write_bytes(manifest_bytes(manifest))
        for name in OUTPUTS:
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
            if (staging / name).exists():
                os.replace(staging / name, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
