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

# A 100-megapixel upload or a decompression bomb is refused before any pixel is decoded.
MAX_IMAGE_PIXELS = int(os.environ.get("FISSURE_MAX_IMAGE_PIXELS", 40_000_000))
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"}
# Modes we convert to RGB; anything else (float, HSV, LAB) is refused with a 415.
_RGB_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"}
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Never let PIL silently pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input; saved with the model and read back by the server."""

    size: int = 224
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict | None) -> "PreprocessConfig":
        data = dict(data or {})
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(x) for x in data[key])
        return cls(**data)


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes into an RGB image, or raise a one-line InputError."""
    if not data:
        raise InputError("empty image: the payload has zero bytes; send JPEG or PNG bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"not an image: could not decode {len(data)} bytes as JPEG or PNG"
        ) from None
    except OSError as exc:  # PIL raises OSError for some malformed headers
        raise InputError(f"corrupt image header: {exc}") from None
    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(
            f"unsupported image format {img.format}; send one of {sorted(ALLOWED_FORMATS)}"
        )
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise PayloadTooLarge(
            f"image is {width}x{height} ({width * height / 1e6:.1f} MP); the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP (FISSURE_MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"truncated or corrupt image: {exc}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported mode (gray, palette, 16-bit gray, CMYK, alpha) to RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_GRAY_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
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
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img.convert("L") if img.mode not in _WIDE_GRAY_MODES else img)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable mask: {exc}") from None
    return arr > 0


def image_to_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB image -> uint8 [size, size, 3]: the model's pixels before normalisation.

    Serving's front stops here and ships these bytes to the model worker (4x smaller than
    floats), which finishes with :func:`normalize`; training goes through both at once.
    """
    if img.size != (cfg.size, cfg.size):
        img = img.resize((cfg.size, cfg.size), Image.BILINEAR)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it


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


def mask_to_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """Boolean mask [H, W] -> float tensor [1, size, size] of 0/1 (nearest resize)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(img) > 127).astype(np.float32))[None]


def tensor_to_image(tensor: torch.Tensor, cfg: PreprocessConfig) -> Image.Image:
    """Inverse of image_to_tensor (up to resizing), for overlays and debugging."""
    arr = tensor.detach().cpu().float().numpy().transpose(1, 2, 0)
    arr = arr * np.asarray(cfg.std, dtype=np.float32) + np.asarray(cfg.mean, dtype=np.float32)
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def validate_tensor_batch(batch: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Check a caller-supplied FP32 tensor [N, 3, H, W]; resize to the model's size."""
    if batch.dtype != torch.float32:
        raise InputError(f"tensor dtype must be FP32, got {str(batch.dtype).replace('torch.', '')}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise InputError(f"tensor shape must be [N,3,H,W], got {list(batch.shape)}")
    if batch.shape[0] < 1 or batch.shape[2] < 8 or batch.shape[3] < 8:
        raise InputError(f"tensor shape {list(batch.shape)} is too small (need N>=1, H,W>=8)")
    if batch.shape[2] * batch.shape[3] > MAX_IMAGE_PIXELS:
        raise PayloadTooLarge(f"tensor of {batch.shape[2]}x{batch.shape[3]} exceeds the pixel limit")
    if not torch.isfinite(batch).all():
        raise InputError("tensor holds NaN or infinite values")
    if tuple(batch.shape[2:]) != (cfg.size, cfg.size):
        batch = torch.nn.functional.interpolate(
            batch, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False
        )
    return batch
