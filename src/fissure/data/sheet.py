"""Contact sheets: a grid of thumbnails to look at what a dataset (or the generator) holds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fissure.preprocess import load_image, load_mask


def _thumb(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    side = min(img.size)  # centre square crop, then scale
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def overlay(image: Image.Image, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.55) -> Image.Image:
    """The image with its mask painted on top."""
    arr = np.asarray(image.convert("RGB"), np.float32)
    m = mask[..., None].astype(np.float32) * alpha
    return Image.fromarray((arr * (1 - m) + np.asarray(color, np.float32) * m).astype(np.uint8))


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], thumb: int = 128, cols: int | None = None,
                  label_width: int = 0) -> Image.Image:
    """Rows of thumbnails, each row with an optional label drawn on its first tile."""
    cols = cols or max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (label_width + cols * thumb, len(rows) * thumb), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        for c, img in enumerate(images[:cols]):
            sheet.paste(_thumb(img, thumb), (label_width + c * thumb, r * thumb))
        if label:
            x, y = label_width + 3, r * thumb + 3
            box = draw.textbbox((x, y), label)
            draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
            draw.text((x, y), label, fill=(255, 255, 255))
    return sheet


def segmentation_preview(root: str | os.PathLike, out: str | os.PathLike, count: int = 16,
                         thumb: int = 160) -> Path:
    """Write a sheet of the first images of a segmentation set with their masks overlaid."""
    from fissure.data.loaders import segmentation_items

    items = segmentation_items(root)[:count]
    cols = min(8, len(items))
    images, overlays = [], []
    for item in items:
        img = load_image(item.image)
        images.append(img)
        overlays.append(overlay(img, load_mask(item.mask)))
    rows = []
    for start in range(0, len(items), cols):
        rows.append(("", images[start:start + cols]))
        rows.append(("mask", overlays[start:start + cols]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, thumb=thumb, cols=cols).save(out)
    return out


def classification_preview(root: str | os.PathLike, out: str | os.PathLike, per_class: int = 8,
                           thumb: int = 128) -> Path:
    """Write a sheet with one row of thumbnails per class folder."""
    from fissure.data.loaders import classification_set

    cset = classification_set(root)
    rows = []
    for k, name in enumerate(cset.classes):
        paths = [p for p, label in cset.items if label == k][:per_class]
        rows.append((name, [load_image(p) for p in paths]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, thumb=thumb, cols=per_class).save(out)
    return out
