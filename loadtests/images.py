"""The images the load tests send: synthetic crack photos (fissure.data.synth) from a 0.08 MP
thumbnail to a 12 MP phone photo, JPEG, cached under ``.fissure/loadtests/images/``.

Each image is a synth render (at most 512 px: rendering at 12 MP would take minutes) scaled
up to its size, with per-pixel sensor grain added at full resolution so the JPEG weighs what a
real photo of that size does. ``shift="dark"`` makes a shifted set (underexposed, low contrast,
defocused: a different camera or night shots) for tests that want the drift gauges to move.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from loadtests.config import SIZES, Size

GENERATOR = "v1"  # part of the cache path: change it when the images change
QUALITY = 90
SHIFTS = ("none", "dark")


def cache_dir(root: Path | None = None) -> Path:
    from fissure.settings import state_dir

    return (root or state_dir() / "loadtests" / "images") / GENERATOR


def _render(size: Size, index: int, shift: str) -> bytes:
    from fissure.data import synth

    side = min(512, max(size.width, size.height))
    # seeds by size and index: the same files on every machine
    sample = synth.render(synth.image_rng(1309, index, stream=SIZES.index(size) + 10), side)
    img = Image.fromarray(sample.image, "RGB")
    scale = max(size.width, size.height) / side
    img = img.resize((round(side * scale), round(side * scale)), Image.Resampling.BICUBIC)
    left, top = (img.width - size.width) // 2, (img.height - size.height) // 2
    img = img.crop((left, top, left + size.width, top + size.height))
    if shift == "dark":
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, size.width / 640)))
    arr = np.asarray(img, dtype=np.float32)
    if shift == "dark":
        arr = arr * 0.35 + 10.0
    rng = np.random.default_rng([index, SIZES.index(size)])
    arr += rng.normal(0.0, 4.0, size=arr.shape[:2] + (1,)).astype(np.float32)  # luma grain
    arr += rng.normal(0.0, 1.5, size=arr.shape).astype(np.float32)  # chroma grain
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def path_of(size: Size, index: int, shift: str = "none", root: Path | None = None) -> Path:
    return cache_dir(root) / f"{size.name}-{size.width}x{size.height}-{shift}-{index}.jpg"


def prepare(sizes: list[Size] | None = None, shift: str = "none", root: Path | None = None,
            echo=None) -> dict[str, list[Path]]:
    """Make (or reuse) every image of ``sizes``; {size name: [paths]}."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown image shift {shift!r}; use one of {SHIFTS}")
    out: dict[str, list[Path]] = {}
    for size in sizes or SIZES:
        paths = []
        for i in range(size.count):
            path = path_of(size, i, shift, root)
            if not path.exists():
                if echo:
                    echo(f">> rendering load-test image {path.name}")
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".part")
                tmp.write_bytes(_render(size, i, shift))
                tmp.replace(path)  # whole files only, even when two runs prepare at once
            paths.append(path)
        out[size.name] = paths
    return out


def load(sizes: list[Size], shift: str = "none", root: Path | None = None) -> dict[str, list[bytes]]:
    """The bytes of the prepared images (prepared now when missing)."""
    return {name: [p.read_bytes() for p in paths] for name, paths in prepare(sizes, shift, root).items()}


def check_limits(data: bytes) -> list[str]:
    """Why the front or the API would refuse this image (empty: it fits every limit)."""
    import base64
    import json

    from fissure.settings import settings

    cfg = settings()
    problems = []
    with Image.open(io.BytesIO(data)) as img:
        pixels = img.width * img.height
    if pixels > cfg.max_image_pixels:
        problems.append(f"{pixels} pixels > FISSURE_MAX_IMAGE_PIXELS {cfg.max_image_pixels}")
    if pixels > cfg.max_request_pixels:
        problems.append(f"{pixels} pixels > FISSURE_MAX_REQUEST_PIXELS {cfg.max_request_pixels}")
    body = len(json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(data).decode()]}]}))
    if body > cfg.max_body_bytes:
        problems.append(f"v2 body {body} bytes > FISSURE_MAX_BODY_BYTES {cfg.max_body_bytes}")
    if len(data) > cfg.api_max_upload_bytes:
        problems.append(f"{len(data)} bytes > FISSURE_API_MAX_UPLOAD_BYTES {cfg.api_max_upload_bytes}")
    return problems


if __name__ == "__main__":  # python -m loadtests.images: prepare the cache and show the sizes
    for name, paths in prepare(echo=print).items():
        weights = [p.stat().st_size for p in paths]
        bad = check_limits(paths[0].read_bytes())
        print(f"{name:10s} {len(paths)} images, {min(weights) / 1e6:.2f}-{max(weights) / 1e6:.2f} MB"
              + (f"  OVER LIMITS: {'; '.join(bad)}" if bad else ""))
    sys.exit(0)
