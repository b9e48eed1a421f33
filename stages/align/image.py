"""Image inspection, normalisation and re-encoding for the align stage.

Pillow is the gatekeeper and img2dataset's ``Resizer`` (OpenCV) does the resizing and encoding:

1. **Header first.** ``Image.open`` only reads the header, so the pixel count is checked before any pixel is
   decoded: more than ``max_pixels`` is ``IMAGE_TOO_LARGE``. Pillow's own decompression-bomb guard also applies
   (it raises above twice ``Image.MAX_IMAGE_PIXELS`` and warns above it), so the effective cap is
   ``min(max_pixels, Image.MAX_IMAGE_PIXELS)``; both are ``IMAGE_TOO_LARGE``.
2. **Full decode** with Pillow: empty, unidentifiable or truncated data is ``IMAGE_CORRUPT``. (This relies on
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` being left False, its default; a process that sets it would let truncated
   images through grey-filled.) A shorter side under ``min_side`` is then ``IMAGE_TOO_SMALL``.
3. **Upright, 8-bit, no metadata.** The EXIF orientation is applied with ``ImageOps.exif_transpose`` because the
   Resizer decodes with ``cv2.IMREAD_UNCHANGED``, which ignores EXIF orientation. The image is converted to L,
   RGB or RGBA (16-bit greyscale scaled down, palette/CMYK converted) and handed to the Resizer as a lossless PNG
   without metadata; the Resizer re-encodes, so EXIF (GPS included), XMP and ICC profiles never reach the output.
   Pixel values are not colour-managed: an image in a wide-gamut ICC profile keeps its numbers and loses the tag.
4. **Resize** with ``Resizer(resize_mode="keep_ratio_largest", resize_only_if_bigger=True)``: the longer side is
   capped at ``max_side`` (img2dataset's ``keep_ratio`` caps the *shorter* side, which is not what a pixel
   budget wants), aspect ratio kept, never upscaled, ``area`` interpolation.
5. **Alpha** is always flattened onto white, for PNG output too: that is what the Resizer does and what CLIP-style
   training wants (RGB). ``encode_format="keep"`` writes PNG for lossless sources (PNG, GIF, BMP, TIFF) and JPEG
   for everything else (JPEG, WebP, ...).

The same input bytes and options always give the same output bytes (PNG and JPEG encoders are deterministic).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmcurate.schemas.reasons import Reason, Rejected

OutputFormat = Literal["jpg", "png"]
EncodeFormat = Literal["jpg", "png", "keep"]

_LOSSLESS_SOURCE_FORMATS = {"PNG", "GIF", "BMP", "TIFF"}
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# What can go wrong inside Pillow while identifying or decoding a hostile file.
_PIL_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, TypeError)


@dataclass(frozen=True)
class NormalisedImage:
    """Re-encoded image; ``original_*`` are the decoded source size after EXIF orientation (upright)."""

    data: bytes
    format: OutputFormat
    width: int
    height: int
    original_width: int
    original_height: int


def normalise_image(
    data: bytes,
    *,
    max_side: int,
    max_pixels: int,
    min_side: int,
    encode_format: EncodeFormat,
    quality: int,
    png_compression: int = 6,
) -> NormalisedImage:
    """Check, decode, orient, resize and re-encode one image; see the module docstring for the policy.

    ``quality`` is the JPEG quality (0-100); ``png_compression`` the PNG zlib level (0-9).
    """
    if not data:
        raise Rejected(Reason.IMAGE_CORRUPT, "empty body")
    try:
        image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as err:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"pillow: {err}") from None
    except _PIL_DECODE_ERRORS as err:
        raise Rejected(Reason.IMAGE_CORRUPT, f"open: {type(err).__name__}: {err}") from None

    header_width, header_height = image.size
    pixel_cap = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if header_width * header_height > pixel_cap:
        raise Rejected(
            Reason.IMAGE_TOO_LARGE,
            f"header says {header_width}x{header_height} = {header_width * header_height} px > {pixel_cap}",
        )
    source_format = image.format or ""
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        lossless_png = _as_resizer_input(upright)
    except Image.DecompressionBombError as err:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"pillow: {err}") from None
    except _PIL_DECODE_ERRORS as err:
        raise Rejected(Reason.IMAGE_CORRUPT, f"decode: {type(err).__name__}: {err}") from None

    if min(upright.size) < min_side:
        raise Rejected(Reason.IMAGE_TOO_SMALL, f"{upright.width}x{upright.height}, shorter side < {min_side}")

    output_format = _output_format(encode_format, source_format)
    resizer = _resizer(max_side, output_format, quality if output_format == "jpg" else png_compression)
    encoded, width, height, original_width, original_height, error = resizer(io.BytesIO(lossless_png))
    if error is not None:
        raise Rejected(Reason.IMAGE_CORRUPT, f"resizer: {error}")
    return NormalisedImage(
        data=encoded,
        format=output_format,
        width=width,
        height=height,
        original_width=original_width,
        original_height=original_height,
    )


def _output_format(encode_format: EncodeFormat, source_format: str) -> OutputFormat:
    if encode_format == "keep":
        return "png" if source_format in _LOSSLESS_SOURCE_FORMATS else "jpg"
    if encode_format not in ("jpg", "png"):
        raise ValueError(f"encode_format must be 'jpg', 'png' or 'keep', got {encode_format!r}")
    return encode_format


def _as_resizer_input(image: Image.Image) -> bytes:
    """An 8-bit L/RGB/RGBA PNG of ``image`` with no metadata, which cv2 decodes exactly as Pillow did."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling; scale 16-bit range to 8-bit.
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif image.mode != "L":
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    # compress_level=1: this PNG only crosses into cv2 in memory, speed matters more than size.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@lru_cache(maxsize=32)
def _resizer(max_side: int, output_format: OutputFormat, encode_quality: int):
    """One Resizer per option set (it holds only its options, so sharing between calls is safe)."""
    # albumentations (imported by img2dataset) checks PyPI for updates on import unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.resizer import Resizer  # heavy import (albumentations, cv2): only when images are handled

    return Resizer(
        image_size=max_side,
        resize_mode="keep_ratio_largest",
        resize_only_if_bigger=True,
        downscale_interpolation="area",
        encode_format=output_format,
        encode_quality=encode_quality,
    )
