"""Image inspection, normalisation and re-encoding for the align stage: one decode, one resize, one encode.

Pillow is the gatekeeper and the decoder; OpenCV, with img2dataset's ``Resizer`` settings, resizes and encodes.
The decoded pixels reach OpenCV as a numpy array, never as an intermediate file: each image is decoded once,
resized at most once and encoded once.

1. **Header first.** ``Image.open`` only reads the header, so the pixel count is checked before any pixel is
   decoded: more than ``max_pixels`` is ``IMAGE_TOO_LARGE``. Pillow's own decompression-bomb guard also applies
   (it raises above twice ``Image.MAX_IMAGE_PIXELS`` and warns above it), so the effective cap is
   ``min(max_pixels, Image.MAX_IMAGE_PIXELS)``; both are ``IMAGE_TOO_LARGE``.
2. **Strict decode** with Pillow: empty, unidentifiable or truncated data is ``IMAGE_CORRUPT``. (This relies on
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` being left False, its default; a process that sets it would let truncated
   images through grey-filled. Pillow's JPEG ``draft`` mode is not used: it would change the pixels.) A shorter
   side under ``min_side`` is then ``IMAGE_TOO_SMALL``.
3. **Upright, 8-bit.** The EXIF orientation is applied with ``ImageOps.exif_transpose`` (in place, no copy). The
   image becomes an L, RGB or RGBA array: 16-bit greyscale is scaled to 8 bits (Pillow's own ``I;16 -> L``
   clips at 255), palette, CMYK and the rest are converted by Pillow; a palette or colour-key transparency
   counts as alpha.
4. **Alpha** is always flattened onto white, for PNG output too (CLIP-style training wants RGB), with the
   formula of the Resizer's alpha matting (``alpha / 255 * colour + 255 - alpha`` in float64, rounded half to
   even), so the pixels are the ones the Resizer produced; a fully opaque alpha channel is dropped without the
   arithmetic (the formula gives the colour back exactly).
5. **Resize**: the longer side is capped at ``max_side``, aspect ratio kept, never upscaled, ``area``
   interpolation (``cv2.INTER_AREA``): the Resizer's ``keep_ratio_largest`` mode with ``resize_only_if_bigger``
   (img2dataset's ``keep_ratio`` caps the *shorter* side, which is not what a pixel budget wants).
6. **Encode** with ``cv2.imencode``; cv2 wants BGR, so RGB is swapped to BGR after resizing (on the smaller
   image). Nothing but pixels is written: EXIF (GPS included), XMP and ICC profiles never reach the output.
   Pixel values are not colour-managed: an image in a wide-gamut ICC profile keeps its numbers and loses the tag.
   ``encode_format="keep"`` writes PNG for lossless sources (PNG, GIF, BMP, TIFF) and JPEG for everything else
   (JPEG, WebP, ...).

What is img2dataset's: a ``Resizer`` built with the options above supplies (and validates) the interpolation flag
and the encode parameters (``IMWRITE_JPEG_QUALITY``/``IMWRITE_PNG_COMPRESSION`` with ``quality`` or
``png_compression``); the resize is the albumentations ``LongestMaxSize`` transform its ``__call__`` applies in
that mode (new side = ``round(side * max_side / longer side)``). Copied from it, because it is inline in
``Resizer.__call__``: the alpha formula and the "resize only when the longer side exceeds ``max_side``" test.
Not used: ``Resizer.__call__`` itself, which takes encoded bytes and decodes them with cv2 (``IMREAD_UNCHANGED``,
blind to EXIF orientation): feeding it was what cost a Pillow -> PNG -> cv2 round trip, two decodes and two
encodes per image. ``tests/align/test_image.py`` checks that the output bytes equal that
old path's on real photos.

OpenCV runs single-threaded inside the call (its previous thread count is restored on the way out), as it did
under the Resizer, which sets it for the whole process: the parallelism is one Ray worker per core.

The same input bytes and options always give the same output bytes (PNG and JPEG encoders are deterministic).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmcurate.schemas.reasons import Reason, Rejected

OutputFormat = Literal["jpg", "png"]
EncodeFormat = Literal["jpg", "png", "keep"]

_LOSSLESS_SOURCE_FORMATS = {"PNG", "GIF", "BMP", "TIFF"}
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
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
    output_format = _output_format(encode_format, image.format or "")
    try:
        image.load()  # the one decode
        ImageOps.exif_transpose(image, in_place=True)
        pixels = _upright_pixels(image)
    except Image.DecompressionBombError as err:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"pillow: {err}") from None
    except _PIL_DECODE_ERRORS as err:
        raise Rejected(Reason.IMAGE_CORRUPT, f"decode: {type(err).__name__}: {err}") from None

    original_height, original_width = pixels.shape[:2]
    if min(original_width, original_height) < min_side:
        raise Rejected(Reason.IMAGE_TOO_SMALL, f"{original_width}x{original_height}, shorter side < {min_side}")

    encoder = _encoder(max_side, output_format, quality if output_format == "jpg" else png_compression)
    encoded = encoder(pixels)
    height, width = encoded.shape_hw
    return NormalisedImage(
        data=encoded.data,
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


def _upright_pixels(image: Image.Image) -> np.ndarray:
    """The decoded (already oriented) image as 8-bit L (H x W) or RGB (H x W x 3), alpha flattened onto white."""
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling; scale 16-bit range to 8-bit.
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode == "L" and not has_alpha:
        return np.asarray(image)
    if not has_alpha:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[:, :, 3, np.newaxis]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgba[..., :3])  # opaque: the formula below would give the colour back exactly
    # img2dataset Resizer's alpha matting onto white, operation for operation (float64, clip, rint)
    flat = alpha / 255 * rgba[..., :3] + 255 - alpha
    return np.rint(flat.clip(min=0, max=255)).astype(np.uint8)


@dataclass(frozen=True)
class _Encoded:
    data: bytes
    shape_hw: tuple[int, int]


@dataclass(frozen=True)
class _Encoder:
    """Resize (longer side capped, never up) and encode an L or RGB array with one Resizer's settings."""

    max_side: int
    extension: str
    params: tuple[int, ...]
    longest_max_size: Callable[..., dict[str, Any]]

    def __call__(self, pixels: np.ndarray) -> _Encoded:
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # one image per call; the parallelism is one worker per core
        try:
            if max(pixels.shape[:2]) > self.max_side:  # the Resizer's keep_ratio_largest + resize_only_if_bigger
                pixels = self.longest_max_size(image=pixels)["image"]
            if pixels.ndim == 3:
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            ok, buffer = cv2.imencode(self.extension, pixels, params=list(self.params))
        finally:
            cv2.setNumThreads(threads)
        if not ok:
            raise RuntimeError(f"cv2.imencode({self.extension!r}) failed on a {pixels.shape} {pixels.dtype} array")
        return _Encoded(buffer.tobytes(), (pixels.shape[0], pixels.shape[1]))


@lru_cache(maxsize=32)
def _encoder(max_side: int, output_format: OutputFormat, encode_quality: int) -> _Encoder:
    """One encoder per option set, its settings taken from the Resizer the old two-pass path called."""
    # albumentations (imported by img2dataset) checks PyPI for updates on import unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # heavy imports (albumentations, cv2): only when images are handled
    import albumentations
    from img2dataset.resizer import Resizer

    resizer = Resizer(  # validates the options (PNG compression 0-9) and derives the cv2 flags from them
        image_size=max_side,
        resize_mode="keep_ratio_largest",
        resize_only_if_bigger=True,
        downscale_interpolation="area",
        encode_format=output_format,
        encode_quality=encode_quality,
    )
    return _Encoder(
        max_side=resizer.image_size,
        extension=f".{resizer.encode_format}",
        params=tuple(resizer.encode_params),
        # the transform Resizer.__call__ builds for keep_ratio_largest, with its downscale interpolation
        longest_max_size=albumentations.LongestMaxSize(
            max_size=resizer.image_size, interpolation=resizer.downscale_interpolation, p=1.0
        ),
    )
