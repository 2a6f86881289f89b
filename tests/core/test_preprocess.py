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


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets preprocess's filter
def test_pixel_limit_is_set_in_pillow_and_checked_below_its_hard_stop(monkeypatch):
    """FISSURE_MAX_IMAGE_PIXELS (40 MP by default) becomes Pillow's own bomb limit on every decode,
    which makes Pillow stop at twice that; an image between the two is refused from its header too."""
    from fissure.settings import settings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 123)  # whatever another library left there
    pp.decode_image(encode(Image.new("RGB", (30, 30))))
    assert Image.MAX_IMAGE_PIXELS == settings().max_image_pixels == 40_000_000
    with pytest.raises(PayloadTooLarge) as info:
        pp.decode_image(png_header_only(7000, 6000))
    assert str(info.value) == ("image refused as a decompression bomb: 7000x6000 (42 MP) is over the "
                               "40 MP limit (FISSURE_MAX_IMAGE_PIXELS)")
    with pytest.raises(PayloadTooLarge, match="header declares over 80 MP; the limit is 40 MP"):
        pp.decode_image(png_header_only(10_000, 9_000))


def test_mask_files_keep_the_pixel_limit(tmp_path):
    from fissure.errors import DataError

    path = tmp_path / "m.png"
    path.write_bytes(png_header_only(200_000, 200_000))
    with pytest.raises(DataError, match="m.png: unreadable mask: image refused as a decompression bomb"):
        pp.load_mask(path)


def test_only_the_allowed_decoders_parse_a_byte():
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    with pytest.raises(UnsupportedMediaType, match="not an image"):
        pp.decode_image(gif)


def test_thirty_two_bit_gray_saturates_like_sixteen_bit():
    arr = np.array([[-7, 0, 255, 256, 65535, 200_000]], dtype=np.int32)
    out = np.asarray(pp.decode_image(encode(Image.fromarray(arr), "TIFF")))[..., 0]
    assert out.tolist() == [[0, 0, 0, 1, 255, 255]]
    narrow = np.array([[-7, 0, 17, 255]], dtype=np.int32)  # nothing over 255: kept as it is
    assert np.asarray(pp.decode_image(encode(Image.fromarray(narrow), "TIFF")))[..., 0].tolist() == [[0, 0, 17, 255]]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_wide_gray_is_narrowed_without_float_copies(mode):
    """16/32-bit gray becomes 8-bit with integer shifts in blocks: the Python-side memory peak
    stays under 2.5x the wide image's own bytes (a float64 copy alone is 4x or 8x them)."""
    import tracemalloc

    h, w = 1024, 1024
    rng = np.random.default_rng(0)
    if mode == "I;16":
        wide, fmt = rng.integers(0, 65536, (h, w), dtype=np.uint16), "PNG"
    else:
        wide, fmt = rng.integers(0, 70_000, (h, w)).astype(np.int32), "TIFF"
    data = encode(Image.fromarray(wide), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    tracemalloc.start()
    try:
        out = pp.decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * wide.nbytes, f"peak {peak / wide.nbytes:.1f}x the image's bytes"
    expected = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(out)[..., 0], expected)


def _gray_photo(spread: float, shape=(48, 64), seed=0) -> np.ndarray:
    """An RGB photo whose grey level has about this standard deviation around 120."""
    rng = np.random.default_rng(seed)
    grey = rng.normal(120.0, spread, shape)
    tint = np.array([1.0, 0.95, 0.9])
    return np.clip(grey[..., None] * tint, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("spread", [8.0, 12.0, 40.0])
def test_stretch_contrast_brings_every_image_to_the_same_grey_spread(spread):
    pixels = _gray_photo(spread)
    out = pp.stretch_contrast(pixels, 24.0)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    assert abs(out.mean(axis=2).std() - 24.0) < 0.5
    # about each channel's mean: the colour of the surface stays, only its contrast changes
    assert np.allclose(out.mean(axis=(0, 1)), pixels.mean(axis=(0, 1)), atol=1.0)
    # monotone: a darker pixel stays darker
    grey_in, grey_out = pixels[..., 0].astype(int).ravel(), out[..., 0].astype(int).ravel()
    order = np.argsort(grey_in, kind="stable")
    assert (np.diff(grey_out[order]) >= 0).all()


def test_stretch_contrast_off_and_its_limits():
    pixels = _gray_photo(10.0)
    assert pp.stretch_contrast(pixels, 0.0) is pixels
    low, high = pp.STRETCH_LIMITS
    # a nearly flat wall is not blown up into noise: at most `high` times its spread
    flat = _gray_photo(1.0)
    assert flat.mean(axis=2).std() * high * 1.05 >= pp.stretch_contrast(flat, 24.0).mean(axis=2).std()
    # a uniform image has no spread to stretch and comes back as it was
    uniform = np.full((16, 16, 3), 77, np.uint8)
    assert (pp.stretch_contrast(uniform, 24.0) == uniform).all()
    # a busy image is brought down no further than `low` times its spread
    busy = _gray_photo(70.0)
    assert pp.stretch_contrast(busy, 2.0).mean(axis=2).std() >= busy.mean(axis=2).std() * low * 0.9


def test_image_to_array_stretches_as_its_config_says():
    img = Image.fromarray(_gray_photo(8.0, shape=(40, 40)))
    cfg = pp.PreprocessConfig(size=32, gray_std=24.0)
    assert pp.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    stretched, raw = pp.image_to_array(img, cfg), pp.image_to_array(img, cfg, stretch=False)
    assert (raw == pp.image_to_array(img, pp.PreprocessConfig(size=32))).all()
    assert (stretched == pp.stretch_contrast(raw, 24.0)).all()
    assert stretched.mean(axis=2).std() > 2 * raw.mean(axis=2).std()
    # specs saved before the key existed read back unstretched
    assert pp.PreprocessConfig.from_dict({"size": 32}).gray_std == 0.0
