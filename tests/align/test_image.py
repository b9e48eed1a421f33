"""Image checks, orientation, metadata stripping, resizing and encoding, on images built in the test."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.align.image import NormalisedImage, normalise_image

DEFAULTS = dict(max_side=256, max_pixels=50_000_000, min_side=16, encode_format="jpg", quality=90)
GPS_IFD = 0x8825
ORIENTATION = 0x0112


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height RGB, followed by a tiny IDAT: a decompression bomb header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def decode(result: NormalisedImage) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def rejection(data: bytes, **overrides) -> Rejected:
    with pytest.raises(Rejected) as excinfo:
        normalise_image(data, **{**DEFAULTS, **overrides})
    return excinfo.value


def test_bomb_header_rejected_without_decoding():
    # 40000 x 40000 = 1.6 Gpx: Pillow's own bomb error fires while reading the header
    assert rejection(png_claiming(40000, 40000)).reason == Reason.IMAGE_TOO_LARGE


def test_header_over_our_pixel_cap_rejected_before_decoding():
    # 5000 x 5000 is under Pillow's limit; the tiny IDAT could never decode to it, so only the header check can
    # produce IMAGE_TOO_LARGE here (decoding would say IMAGE_CORRUPT)
    rejected = rejection(png_claiming(5000, 5000), max_pixels=1_000_000)
    assert rejected.reason == Reason.IMAGE_TOO_LARGE and "5000x5000" in rejected.detail
    assert rejection(png_claiming(5000, 5000)).reason == Reason.IMAGE_CORRUPT  # under the cap: decoded, fails


def test_pillow_bomb_warning_range_is_too_large_even_with_a_higher_cap():
    with pytest.warns(Image.DecompressionBombWarning):
        rejected = rejection(png_claiming(10000, 10000), max_pixels=10**12)
    assert rejected.reason == Reason.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(1).bytes(3000),
        encoded(gradient(300, 200), "JPEG", quality=90)[:1500],
        encoded(gradient(300, 200), "PNG")[:-200],
    ],
    ids=["zero-bytes", "random", "truncated-jpeg", "truncated-png"],
)
def test_corrupt_images_rejected(data):
    assert rejection(data).reason == Reason.IMAGE_CORRUPT


def test_too_small_rejected():
    assert rejection(encoded(gradient(40, 12), "PNG"), min_side=16).reason == Reason.IMAGE_TOO_SMALL


def test_longer_side_capped_ratio_kept():
    result = normalise_image(encoded(gradient(1000, 500), "PNG"), **DEFAULTS)
    assert (result.width, result.height, result.original_width, result.original_height) == (256, 128, 1000, 500)
    assert result.format == "jpg" and decode(result).size == (256, 128)
    tall = normalise_image(encoded(gradient(300, 900), "JPEG"), **DEFAULTS)
    assert (tall.width, tall.height) == (85, 256)  # 300 * 256 / 900 = 85.3


def test_small_images_not_upscaled():
    result = normalise_image(encoded(gradient(150, 100), "PNG"), **DEFAULTS)
    assert (result.width, result.height) == (150, 100) and decode(result).size == (150, 100)


def test_same_input_gives_same_bytes():
    data = encoded(gradient(640, 480), "JPEG", quality=95)
    assert normalise_image(data, **DEFAULTS).data == normalise_image(data, **DEFAULTS).data


def test_gps_exif_stripped():
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 22.0, 30.0), "E", (4.0, 53.0, 10.0)
    data = encoded(gradient(320, 240), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)  # the input really carries GPS
    for encode_format in ("jpg", "png"):
        result = normalise_image(data, **{**DEFAULTS, "encode_format": encode_format})
        out = decode(result)
        assert not out.getexif() and "exif" not in out.info
        assert b"Exif" not in result.data and b"CameraMaker" not in result.data


def test_exif_orientation_applied():
    # stored landscape: left half red, right half blue; orientation 6 = display rotated 90 degrees clockwise,
    # so the upright image is portrait with red on top
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    result = normalise_image(data, **DEFAULTS)
    assert (result.width, result.height, result.original_width, result.original_height) == (40, 60, 40, 60)
    upright = np.asarray(decode(result).convert("RGB")).astype(int)
    assert upright[10, 20, 0] > 200 and upright[10, 20, 2] < 60  # top is red
    assert upright[50, 20, 2] > 200 and upright[50, 20, 0] < 60  # bottom is blue


def test_alpha_flattened_on_white_and_keep_format():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (0, 128, 0, 255)  # opaque green left, fully transparent right
    data = encoded(Image.fromarray(rgba, "RGBA"), "PNG")
    result = normalise_image(data, **{**DEFAULTS, "encode_format": "keep"})
    assert result.format == "png"
    out = decode(result)
    assert out.format == "PNG" and out.mode == "RGB"
    assert out.getpixel((10, 10)) == (0, 128, 0) and out.getpixel((50, 10)) == (255, 255, 255)


@pytest.mark.parametrize("source,expected", [("JPEG", "jpg"), ("WEBP", "jpg"), ("GIF", "png"), ("BMP", "png")])
def test_keep_maps_lossless_sources_to_png(source, expected):
    result = normalise_image(encoded(gradient(64, 48), source), **{**DEFAULTS, "encode_format": "keep"})
    assert result.format == expected and decode(result).format == {"jpg": "JPEG", "png": "PNG"}[expected]


def test_sixteen_bit_greyscale_scaled_not_clipped():
    grey16 = Image.fromarray(np.full((32, 32), 32896, np.uint16))  # 32896 / 257 = 128
    assert grey16.mode.startswith("I")
    result = normalise_image(encoded(grey16, "PNG"), **{**DEFAULTS, "encode_format": "png"})
    assert decode(result).getpixel((5, 5)) == 128


def test_jpeg_quality_changes_size():
    data = encoded(gradient(256, 256).rotate(30), "PNG")
    low = normalise_image(data, **{**DEFAULTS, "quality": 20})
    high = normalise_image(data, **{**DEFAULTS, "quality": 95})
    assert len(low.data) < len(high.data)
