import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fissure import preprocess as pp
from fissure.errors import InputError, PayloadTooLarge, UnsupportedMediaType


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions but carries almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "1", "LA"])
def test_supported_modes_decode_to_rgb(mode):
    arr = (np.arange(32 * 48) % 251).reshape(32, 48).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 257)
    out = pp.decode_image(encode(img))
    assert out.mode == "RGB" and out.size == (48, 32)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    out = np.asarray(pp.decode_image(encode(Image.fromarray(arr))))
    assert out.min() == 255


def test_alpha_is_flattened_onto_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(pp.decode_image(encode(img))).min() == 255


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InputError),
        (b"this is not an image at all", UnsupportedMediaType),
        (png_header_only(12_000, 9_000), PayloadTooLarge),
        (png_header_only(200_000, 200_000), PayloadTooLarge),
    ],
    ids=["zero-bytes", "not-an-image", "100-megapixel", "decompression-bomb"],
)
def test_bad_bytes_raise_one_line_errors(data, error):
    with pytest.raises(error) as info:
        pp.decode_image(data)
    assert "\n" not in str(info.value) and str(info.value)


def test_truncated_image_is_refused():
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(InputError, match="truncated|corrupt"):
        pp.decode_image(data[: len(data) // 2])


def test_float_mode_is_unsupported():
    img = Image.fromarray(np.zeros((8, 8), dtype=np.float32), mode="F")
    with pytest.raises(UnsupportedMediaType, match="mode"):
        pp.decode_image(encode(img, "TIFF"))


def test_tensor_roundtrip_and_config_serialisation():
    cfg = pp.PreprocessConfig(size=32)
    assert pp.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    tensor = pp.image_to_tensor(img, cfg)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    back = np.asarray(pp.tensor_to_image(tensor, cfg)).astype(int)
    assert np.abs(back - np.asarray(img).astype(int)).max() <= 1


def test_mask_to_tensor_is_binary_and_resized():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 5:50] = True
    tensor = pp.mask_to_tensor(mask, 16)
    assert tensor.shape == (1, 16, 16) and set(tensor.unique().tolist()) <= {0.0, 1.0}
    assert tensor.sum() > 0


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.zeros(1, 3, 32, 32, dtype=torch.float64), "FP32"),
        (torch.zeros(3, 32, 32), r"\[N,3,H,W\]"),
        (torch.zeros(1, 1, 32, 32), r"\[N,3,H,W\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    ],
)
def test_tensor_validation(tensor, message):
    with pytest.raises(InputError, match=message):
        pp.validate_tensor_batch(tensor, pp.PreprocessConfig(size=16))


def test_tensor_batch_is_resized_to_model_size():
    out = pp.validate_tensor_batch(torch.zeros(2, 3, 40, 24), pp.PreprocessConfig(size=16))
    assert out.shape == (2, 3, 16, 16)


def test_normalize_matches_the_formula_and_is_channels_last():
    """(x/255 - mean)/std per channel, computed as (x - 255 mean)/(255 std) on uint8 pixels."""
    cfg = pp.PreprocessConfig(size=16)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    out = pp.normalize(torch.from_numpy(pixels), cfg)
    ref = ((pixels / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)).transpose(0, 3, 1, 2)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert np.allclose(out.numpy(), ref, atol=1e-5)
