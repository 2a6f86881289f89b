"""Image decoding and tensor preparation: the one place shared by training and serving.

Training reads files through :func:`load_image`, serving reads request bodies through
:func:`decode_image`; both then call :func:`image_to_tensor` with the model's own
:class:`PreprocessConfig` (stored with the model), so there is no train/serve skew.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from fissure.errors import DataError, InputError, PayloadTooLarge, UnsupportedMediaType
from fissure.settings import settings

# Only these decoders ever parse a byte (Image.open(formats=...); multi-picture JPEGs, "MPO",
# come through the JPEG decoder); a 100-megapixel upload or a decompression bomb is refused
# from its header, before any pixel is decoded (open_image).
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
# ... as open_image's errors name them: "JPEG, PNG, BMP, TIFF or WebP"
_ACCEPTED = " or ".join(", ".join(ALLOWED_FORMATS).replace("WEBP", "WebP").rsplit(", ", 1))
# Modes we convert to RGB; anything else (float, HSV, LAB) is refused with a 415.
_RGB_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"}
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Never let PIL silently pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow only warns between its limit and twice that, sizes open_image refuses itself: noise in logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# 16/32-bit gray is narrowed to 8 bits in blocks of this many pixels, so the temporaries stay small.
_NARROW_BLOCK = 1 << 18


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input; saved with the model and read back by the server."""

    size: int = 224
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    # each image's grey-level standard deviation (0-255) after stretching about its mean; 0 = off
    # (:func:`stretch_contrast`)
    gray_std: float = 0.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict | None) -> "PreprocessConfig":
        data = dict(data or {})
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(x) for x in data[key])
        return cls(**data)


def open_image(data: bytes) -> Image.Image:
    """Open encoded image bytes lazily: the header is parsed, no pixel is decoded yet.

    Pillow's decompression-bomb limit is set from ``FISSURE_MAX_IMAGE_PIXELS`` on every call
    (it is a process global; settings may be reloaded), and an image over it is refused with a
    one-line PayloadTooLarge before decoding. Other failures are InputError/UnsupportedMediaType.
    """
    if not data:
        raise InputError(f"empty image: the payload has zero bytes; send {_ACCEPTED} bytes")
    limit = settings().max_image_pixels
    Image.MAX_IMAGE_PIXELS = limit  # Pillow raises DecompressionBombError over twice this
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"image refused as a decompression bomb: its header declares over "
                              f"{_mp(2 * limit)}; the limit is {_mp(limit)} (FISSURE_MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not an image: could not decode {len(data)} bytes as {_ACCEPTED}") from None
    except OSError as exc:  # PIL raises OSError for some malformed headers
        raise InputError(f"corrupt image header: {exc}") from None
    width, height = img.size
    if width * height > limit:
        img.close()
        raise PayloadTooLarge(f"image refused as a decompression bomb: {width}x{height} "
                              f"({_mp(width * height)}) is over the {_mp(limit)} limit (FISSURE_MAX_IMAGE_PIXELS)")
    if width < 1 or height < 1:
        img.close()
        raise InputError(f"image has no pixels ({width}x{height})")
    return img


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes into an RGB image, or raise a one-line InputError."""
    return finish_decode(open_image(data))


def finish_decode(img: Image.Image) -> Image.Image:
    """Decode the pixels of an image from :func:`open_image` and convert them to RGB."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"truncated or corrupt image: {exc}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported mode (gray, palette, 16/32-bit gray, CMYK, alpha) to RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_GRAY_MODES:
        return narrow_gray(img).convert("RGB")
    if mode not in _RGB_MODES:
        raise UnsupportedMediaType(
            f"unsupported image mode {mode!r}; send 8/16-bit grayscale, RGB or RGBA"
        )
    if mode in {"RGBA", "LA", "PA", "La"} or (mode == "P" and "transparency" in img.info):
        # Flatten alpha onto white, which is how people see the image.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def narrow_gray(img: Image.Image) -> Image.Image:
    """16-bit (I;16*) or 32-bit (I) gray -> 8-bit "L": the top byte of 16-bit values (values
    over 65535 saturate, negatives are 0), or the values as they are when none exceeds 255.

    Integer shifts in blocks of rows: no float copy, and temporaries of one block only.
    """
    arr = np.asarray(img)  # uint16 or int32, one copy of the image's own bytes
    wide = arr.max(initial=0) > 255
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, _NARROW_BLOCK // max(1, arr.shape[1]))
    for y in range(0, arr.shape[0], rows):
        block = np.clip(arr[y : y + rows], 0, 65535 if wide else 255)
        out[y : y + rows] = block >> 8 if wide else block
    return Image.fromarray(out, mode="L")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file for training/evaluation; errors name the file."""
    path = Path(path)
    try:
        return decode_image(path.read_bytes())
    except InputError as exc:
        raise DataError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as a boolean array; any nonzero pixel is a defect."""
    path = Path(path)
    try:
        with open_image(path.read_bytes()) as img:
            img.load()
            arr = np.asarray(img.convert("L") if img.mode not in _WIDE_GRAY_MODES else img)
    except (InputError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable mask: {exc}") from None
    return arr > 0


def image_to_array(img: Image.Image, cfg: PreprocessConfig, *, stretch: bool = True) -> np.ndarray:
    """RGB image -> uint8 [size, size, 3]: the model's pixels before normalisation (contrast
    stretched as ``cfg.gray_std`` says, unless ``stretch`` is False: drift statistics want the
    image as it came).

    Serving's front stops here and ships these bytes to the model worker (4x smaller than
    floats), which finishes with :func:`normalize`; training goes through both at once.
    """
    if img.size != (cfg.size, cfg.size):
        img = img.resize((cfg.size, cfg.size), Image.BILINEAR)
    pixels = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
    return stretch_contrast(pixels, cfg.gray_std) if stretch else pixels


# stretch_contrast's factor is held to this range, so a nearly flat image (a blank wall, a
# lens cap) is not blown up into sensor noise
STRETCH_LIMITS = (0.25, 4.0)


def gray_spread(pixels: np.ndarray) -> float:
    """The grey level's (channel mean's) standard deviation of uint8 [H, W, 3] pixels: the
    spread :func:`stretch_contrast` sets."""
    return float(pixels.astype(np.float32).mean(axis=2).std())


def scale_contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """uint8 [H, W, 3] scaled by ``factor`` about each channel's mean, rounded and clipped to 0-255."""
    values = pixels.astype(np.float32)
    centre = values.mean(axis=(0, 1), keepdims=True)
    return np.clip(factor * (values - centre) + centre + 0.5, 0, 255).astype(np.uint8)


def stretch_contrast(pixels: np.ndarray, gray_std: float) -> np.ndarray:
    """uint8 [H, W, 3] scaled (:func:`scale_contrast`) so that their :func:`gray_spread` is
    ``gray_std``, the factor held to :data:`STRETCH_LIMITS`; ``gray_std`` 0 returns ``pixels``
    as they are.

    Every photo then reaches the model at one contrast: a faint crack on a flat grey surface
    comes out as strong as on a contrasty one (docs/training.md, "Contrast stretch").
    """
    if not gray_std:
        return pixels
    low, high = STRETCH_LIMITS
    return scale_contrast(pixels, min(max(gray_std / max(gray_spread(pixels), 1e-3), low), high))


def normalize(pixels: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> normalised float [N, 3, S, S] in channels-last memory (the models'
    layout: no copy before the first convolution)."""
    mean, std = _scaled_mean_std(cfg.mean, cfg.std)
    return pixels.permute(0, 3, 1, 2).float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _scaled_mean_std(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std on the 0-255 scale, shaped to broadcast over [N, 3, H, W] (per-image hot path)."""
    return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
            torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)


def image_to_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """RGB image -> normalised float tensor [3, size, size]."""
    pixels = torch.from_numpy(image_to_array(img, cfg))
    return normalize(pixels[None], cfg)[0].contiguous()


def mask_to_tensor(mask: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Boolean mask [H, W] -> float tensor [1, size, size] (or [1, h, w] for ``size`` (h, w)) of
    0/1 (nearest resize)."""
    h, w = (size, size) if isinstance(size, int) else size
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    if img.size != (w, h):
        img = img.resize((w, h), Image.NEAREST)
    return torch.from_numpy((np.asarray(img) > 127).astype(np.float32))[None]


def tensor_to_image(tensor: torch.Tensor, cfg: PreprocessConfig) -> Image.Image:
    """Inverse of image_to_tensor (up to resizing), for overlays and debugging."""
    arr = tensor.detach().cpu().float().numpy().transpose(1, 2, 0)
    arr = arr * np.asarray(cfg.std, dtype=np.float32) + np.asarray(cfg.mean, dtype=np.float32)
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def validate_tensor_batch(batch: torch.Tensor, cfg: PreprocessConfig, resize: bool = True) -> torch.Tensor:
    """Check a caller-supplied FP32 tensor [N, 3, H, W]; resize to the model's size (unless
    ``resize`` is False: native-resolution tiling keeps the caller's size)."""
    if batch.dtype != torch.float32:
        raise InputError(f"tensor dtype must be FP32, got {str(batch.dtype).replace('torch.', '')}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise InputError(f"tensor shape must be [N,3,H,W], got {list(batch.shape)}")
    if batch.shape[0] < 1 or batch.shape[2] < 8 or batch.shape[3] < 8:
        raise InputError(f"tensor shape {list(batch.shape)} is too small (need N>=1, H,W>=8)")
    limit = settings().max_image_pixels
    if batch.shape[2] * batch.shape[3] > limit:
        raise PayloadTooLarge(f"tensor of {batch.shape[2]}x{batch.shape[3]} is over the {_mp(limit)} "
                              "limit (FISSURE_MAX_IMAGE_PIXELS)")
    if not torch.isfinite(batch).all():
        raise InputError("tensor holds NaN or infinite values")
    if resize and tuple(batch.shape[2:]) != (cfg.size, cfg.size):
        batch = torch.nn.functional.interpolate(
            batch, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False
        )
    return batch
