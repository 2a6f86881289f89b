"""Pure encoding helpers shared by the handler, the front and the client.

* masks: PNG bytes, COCO-style uncompressed RLE (column-major counts), bounding boxes;
* heatmaps: 8-bit PNG of a [0, 1] map;
* the internal wire format between the front and the TorchServe handler.

Nothing here imports torch or talks to a server, so it is cheap to unit-test.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct

import numpy as np
from PIL import Image

from fissure.errors import InputError

# ---------------------------------------------------------------------------- base64


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str | bytes, what: str = "input") -> bytes:
    """Strict base64 (standard or URL-safe alphabet, padding optional) -> bytes, or InputError."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise InputError(f"{what} must be a base64 string, got {type(text).__name__}")
    text = text.strip()
    if text.startswith("data:") and "," in text:  # data URLs from browsers
        text = text.split(",", 1)[1]
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


# ---------------------------------------------------------------------------- masks


def mask_to_png(mask: np.ndarray) -> bytes:
    """Boolean/0-1 mask [H, W] -> 8-bit grayscale PNG (0 background, 255 crack)."""
    img = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def png_to_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L")) > 127


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: {'size': [h, w], 'counts': [...]}, column-major, starting with zeros."""
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    flat = mask.flatten(order="F").astype(np.int8)
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    h, w = (int(x) for x in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def mask_boxes(mask: np.ndarray, max_boxes: int = 100, min_area: int = 1) -> list[dict]:
    """Connected crack regions (8-connectivity) as boxes, largest first.

    Each box is ``{"box": [x_min, y_min, x_max, y_max], "area": pixels}`` in pixel
    coordinates of the mask, with ``x_max``/``y_max`` exclusive.
    """
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if not mask.any():
        return []
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[idx] < min_area:
            continue
        ys, xs = sl
        boxes.append({"box": [int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)], "area": int(areas[idx])})
    boxes.sort(key=lambda b: -b["area"])
    return boxes[:max_boxes]


def heatmap_to_png(values: np.ndarray) -> bytes:
    """A map of values in [0, 1] -> 8-bit grayscale PNG (255 = 1.0)."""
    arr = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    img = Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def summarize(values: np.ndarray) -> dict:
    """Raw-value summary of a heatmap: min/max/mean and where the peak is (x, y)."""
    arr = np.asarray(values, dtype=np.float32)
    peak = np.unravel_index(int(np.argmax(arr)), arr.shape)
    return {
        "min": round(float(arr.min()), 6),
        "max": round(float(arr.max()), 6),
        "mean": round(float(arr.mean()), 6),
        "peak": [int(peak[1]), int(peak[0])],
        "size": [int(arr.shape[0]), int(arr.shape[1])],
    }


def overlay(image: Image.Image, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.5) -> Image.Image:
    """Paint ``mask`` (boolean, or a [0, 1] heatmap) over ``image`` for people to look at."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask)
    weight = m.astype(np.float32) if m.dtype.kind == "f" else (m > 0).astype(np.float32)
    if weight.shape != base.shape[:2]:
        weight = np.asarray(Image.fromarray(weight, mode="F").resize(image.size, Image.BILINEAR))
    weight = np.clip(weight, 0.0, 1.0)[..., None] * alpha
    out = (1 - weight) * base + weight * np.asarray(color, dtype=np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------- wire format
#
# front -> handler:  b"FSR1" | u32 header_len | header JSON | payload bytes (concatenated)
#   header = {"op": "predict"|"explain", "items": [{"kind": "image", "n": len}
#             | {"kind": "tensor", "n": len, "dtype": "float32", "shape": [N, 3, H, W]}
#             | {"kind": "pixels", "n": len, "shape": [S, S, 3], "size": [h, w]}]}
#   "pixels": an image the front already decoded and resized (fissure.preprocess.image_to_array,
#   uint8); the worker only normalises it. "size" is the image's own size, for masks and heatmaps.
# handler -> front:  JSON {"results": [[result, ...] | {"error": msg, "status": code}, ...]}
#   one entry per item; an image or pixels item yields one result, a tensor item N results.
# The magic prefix lets the same handler also accept raw image bytes and plain JSON
# (TorchServe's native /predictions/<name>).

WIRE_MAGIC = b"FSR1"
WIRE_HEADER = "X-Fissure-Wire"
WIRE_CONTENT_TYPE = "application/x-fissure-wire"


def pack_wire(op: str, items: list[tuple[dict, bytes]]) -> bytes:
    meta = {"op": op, "items": []}
    payloads = []
    for info, payload in items:
        meta["items"].append({**info, "n": len(payload)})
        payloads.append(payload)
    header = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([WIRE_MAGIC, struct.pack("!I", len(header)), header, *payloads])


def is_wire(body) -> bool:
    return isinstance(body, (bytes, bytearray, memoryview)) and bytes(body[:4]) == WIRE_MAGIC


def unpack_wire(body: bytes) -> tuple[str, list[tuple[dict, memoryview]]]:
    """Inverse of :func:`pack_wire`; raises InputError on a malformed frame."""
    view = memoryview(body)
    try:
        (hlen,) = struct.unpack("!I", view[4:8])
        meta = json.loads(bytes(view[8 : 8 + hlen]))
        op = meta["op"]
        offset = 8 + hlen
        items = []
        for info in meta["items"]:
            n = int(info["n"])
            if offset + n > len(view):
                raise ValueError("payload shorter than declared")
            items.append((info, view[offset : offset + n]))
            offset += n
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"malformed internal request: {exc}") from None
    if op not in ("predict", "explain"):
        raise InputError(f"unknown operation {op!r}")
    return op, items
