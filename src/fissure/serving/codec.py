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
import warnings

import numpy as np
from PIL import Image

from fissure.errors import InputError, PayloadTooLarge
from fissure.settings import settings

# Pillow only warns between its limit and twice that, sizes png_to_mask refuses itself: noise in logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

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


def instance_bytes(inst, where: str) -> bytes:
    """One v1 instance -> image bytes. The forms: ``{"b64": ...}`` (KServe), ``{"data": ...}``
    (KServe's TorchServe samples), ``{"image": {"b64": ...}}`` or ``{"image": ...}`` (TF Serving
    style), or a bare base64 string."""
    if isinstance(inst, dict):
        for key in ("b64", "data"):
            if isinstance(inst.get(key), str):
                return b64decode(inst[key], f"{where}.{key}")
        image = inst.get("image")
        if isinstance(image, dict) and "b64" in image:
            return b64decode(image["b64"], f"{where}.image.b64")
        if isinstance(image, str):
            return b64decode(image, f"{where}.image")
    elif isinstance(inst, str):
        return b64decode(inst, where)
    raise InputError(f'{where} must be {{"b64": "<base64 image>"}}, {{"data": "<base64 image>"}} '
                     f'or {{"image": {{"b64": ...}}}}')


# ---------------------------------------------------------------------------- masks


def mask_to_png(mask: np.ndarray) -> bytes:
    """Boolean/0-1 mask [H, W] -> 8-bit grayscale PNG (0 background, 255 crack)."""
    img = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def png_to_mask(data: bytes) -> np.ndarray:
    """A mask or heatmap PNG (a server's answer) -> boolean [H, W], within the image pixel limit."""
    limit = settings().max_image_pixels
    Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses over twice this while reading the header
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.width * img.height > limit:
                raise PayloadTooLarge(f"PNG of {img.width}x{img.height} is over the "
                                      f"{limit / 1e6:.3g} MP limit (FISSURE_MAX_IMAGE_PIXELS)")
            return np.asarray(img.convert("L")) > 127
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"PNG refused as a decompression bomb: over the {limit / 1e6:.3g} MP limit "
                              "(FISSURE_MAX_IMAGE_PIXELS)") from None


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
#   "pixels": an image the front already decoded and resized, uint8, not contrast stretched
#   (fissure.models.tiling.unstretched_pixels); the worker stretches (spec preprocess.gray_std)
#   and normalises it. "size" is the image's own size, for masks and heatmaps. For a tiling model
#   (spec tiling.mode tile) shape is [H', W', 3], the image at its working size.
#   The request carries the header WIRE_HEADER: <token>, the secret the serving supervisor puts in
#   the environment (WIRE_TOKEN_ENV) of the front and of TorchServe; the handler refuses a frame
#   without it, so that nobody else can hand the worker declared sizes.
# handler -> front:  JSON {"results": [[result, ...] | {"error": msg, "status": code}, ...]}
#   one entry per item; an image or pixels item yields one result, a tensor item N results.
# The magic prefix lets the same handler also accept raw image bytes and plain JSON
# (TorchServe's native /predictions/<name>).

WIRE_MAGIC = b"FSR1"
WIRE_HEADER = "X-Fissure-Wire"
WIRE_TOKEN_ENV = "FISSURE_WIRE_TOKEN"
WIRE_CONTENT_TYPE = "application/x-fissure-wire"
# Tensor dtypes a frame may declare (numpy names, as the front writes them), for the size check;
# the worker itself runs FP32 only and refuses the others item by item.
WIRE_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                         "uint8", "uint16", "uint32", "uint64", "bool"})
_HEADER_BYTES_PER_ITEM = 512  # a packed item's JSON is under 150 bytes


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
    """Inverse of :func:`pack_wire`, trusting no declared number.

    The header's size, the item count (images plus tensor rows, ``FISSURE_MAX_ITEMS``), each
    payload length (they must add up to the body exactly), shapes and element counts, and the
    pixels the items will cost (``FISSURE_MAX_IMAGE_PIXELS`` each, ``FISSURE_MAX_REQUEST_PIXELS``
    in all) are checked before anything is allocated. Raises InputError, or PayloadTooLarge for
    a frame over the limits.
    """
    limits = settings()
    view = memoryview(body)
    if len(view) < 8 or bytes(view[:4]) != WIRE_MAGIC:
        raise InputError("malformed internal request: no frame header")
    (hlen,) = struct.unpack("!I", view[4:8])
    max_header = 1024 + _HEADER_BYTES_PER_ITEM * limits.max_items
    if hlen > max_header or 8 + hlen > len(view):
        raise InputError(f"malformed internal request: header of {hlen} bytes "
                         f"(at most {min(max_header, len(view) - 8)})")
    try:
        meta = json.loads(bytes(view[8 : 8 + hlen]))
    except ValueError as exc:
        raise InputError(f"malformed internal request: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("items"), list) or not meta["items"]:
        raise InputError('malformed internal request: "items" must be a non-empty list')
    op = meta.get("op")
    if op not in ("predict", "explain"):
        raise InputError(f"unknown operation {op!r}")
    infos = meta["items"]
    if len(infos) > limits.max_items:
        raise PayloadTooLarge(f"{len(infos)} items in one request; the limit is {limits.max_items} (FISSURE_MAX_ITEMS)")
    images = pixels = 0
    for i, info in enumerate(infos):
        rows, cost = _check_item(i, info, limits.max_image_pixels)
        images += rows
        pixels += cost
    if images > limits.max_items:
        raise PayloadTooLarge(f"{images} images in one request; the limit is {limits.max_items} (FISSURE_MAX_ITEMS)")
    if pixels > limits.max_request_pixels:
        raise PayloadTooLarge(f"request declares {pixels / 1e6:.3g} MP; the limit is "
                              f"{limits.max_request_pixels / 1e6:.3g} MP per request (FISSURE_MAX_REQUEST_PIXELS)")
    offset = 8 + hlen
    if offset + sum(info["n"] for info in infos) != len(view):
        raise InputError(f"malformed internal request: payload lengths add up to "
                         f"{sum(info['n'] for info in infos)} bytes, the body holds {len(view) - offset}")
    items = []
    for info in infos:
        items.append((info, view[offset : offset + info["n"]]))
        offset += info["n"]
    return op, items


def _check_item(i: int, info, max_image_pixels: int) -> tuple[int, int]:
    """(images, pixels) one declared item will cost; InputError/PayloadTooLarge if it lies or is too big."""
    if not isinstance(info, dict):
        raise InputError(f"malformed internal request: item {i} is not an object")
    n, kind = info.get("n"), info.get("kind")
    if not _is_int(n) or n < 0:
        raise InputError(f"malformed internal request: item {i} has no byte count")
    if kind == "image":  # encoded bytes: the decoder checks the size the image declares
        return 1, 0
    if kind not in ("pixels", "tensor"):
        raise InputError(f"malformed internal request: item {i} has unknown kind {kind!r}")
    shape = info.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(_is_int(s) and 0 < s <= max_image_pixels for s in shape)):
        raise InputError(f"malformed internal request: item {i} shape must be 1 to 4 positive integers")
    count = 1
    for s in shape:
        count *= s
    if kind == "pixels":
        size = info.get("size")
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
            raise InputError(f"malformed internal request: item {i} size must be [height, width]")
        if count != n:
            raise InputError(f"malformed internal request: item {i} declares {n} bytes for shape {shape}")
        cost = size[0] * size[1]
        if cost > max_image_pixels:
            raise PayloadTooLarge(f"item {i} declares a {size[0]}x{size[1]} image; the limit is "
                                  f"{max_image_pixels / 1e6:.3g} MP (FISSURE_MAX_IMAGE_PIXELS)")
        return 1, cost
    dtype = info.get("dtype", "float32")
    if dtype not in WIRE_DTYPES:
        raise InputError(f"malformed internal request: item {i} has unknown dtype {dtype!r}")
    if count * np.dtype(dtype).itemsize != n:
        raise InputError(f"malformed internal request: item {i} declares {n} bytes for {dtype} {shape}")
    rows, plane = (shape[0], shape[-2] * shape[-1]) if len(shape) == 4 else (1, 0)
    if plane > max_image_pixels:
        raise PayloadTooLarge(f"item {i} declares {shape[-2]}x{shape[-1]} tensors; the limit is "
                              f"{max_image_pixels / 1e6:.3g} MP (FISSURE_MAX_IMAGE_PIXELS)")
    return rows, rows * plane


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
