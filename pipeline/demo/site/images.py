"""Image bytes for the demo site: synthetic shapes with known captions, real scikit-image photos, broken files.

Everything here is a pure function of its arguments (a seeded ``random.Random`` / numpy ``Generator`` when there
is randomness) and every encoder gets fixed parameters, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import io
import math
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 210),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 20),
    "purple": (130, 50, 170),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light grey": (200, 200, 200),
    "dark grey": (60, 60, 60),
    "beige": (230, 220, 190),
    "pale blue": (200, 220, 240),
    "black": (10, 10, 10),
    "navy": (20, 30, 80),
}
MIN_CONTRAST = 70  # luma difference so the shape is unmistakable (a yellow star on beige is not)
SUPERSAMPLE = 2  # draw large and box-downsample: anti-aliased edges like a real rendering
JPEG_PARAMS = {"quality": 88, "optimize": False, "progressive": False, "subsampling": 2}
PNG_PARAMS = {"compress_level": 6, "optimize": False}


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def backgrounds_for(colour: str) -> list[str]:
    return [name for name, rgb in BACKGROUNDS.items() if abs(_luma(rgb) - _luma(COLOURS[colour])) >= MIN_CONTRAST]


@dataclass(frozen=True)
class Scene:
    """One synthetic picture, resolution-independent so it can be rendered at several sizes (srcset 1x/2x)."""

    shape: str
    colour: str
    background: str
    cx: float  # centre, as a fraction of width / height
    cy: float
    radius: float  # as a fraction of min(width, height)
    rotation: float  # degrees; circles ignore it
    noise_seed: int
    noise_sigma: float

    @property
    def caption(self) -> str:
        """The canonical true caption: what the image really shows."""
        return f"{article(self.colour)} {self.colour} {self.shape}"


def random_scene(
    rng: random.Random, shape: str | None = None, colour: str | None = None, background: str | None = None
) -> Scene:
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(list(COLOURS))
    return Scene(
        shape=shape,
        colour=colour,
        background=background or rng.choice(backgrounds_for(colour)),
        cx=rng.uniform(0.4, 0.6),
        cy=rng.uniform(0.4, 0.6),
        radius=rng.uniform(0.22, 0.36),
        # small tilts only: a "square" turned 45 degrees would be a "diamond"
        rotation=rng.uniform(-6.0, 6.0),
        noise_seed=rng.randrange(2**31),
        noise_sigma=rng.uniform(3.0, 10.0),
    )


def random_size(rng: random.Random, max_side: int = 512) -> tuple[int, int]:
    width = rng.randrange(64, max_side + 1)
    aspect = rng.choice((1.0, 1.0, 0.75, 4 / 3, 0.6))
    return width, max(64, min(max_side, round(width * aspect)))


PNG_MAX_SIDE = 256  # noisy PNGs compress badly; smaller ones keep the site a few MB per hundred images


def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    def ring(n: int, start_deg: float, radius: float) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(math.radians(start_deg + rotation + 360 * i / n)),
                cy + radius * math.sin(math.radians(start_deg + rotation + 360 * i / n)),
            )
            for i in range(n)
        ]

    if shape == "square":
        return ring(4, 45, r)
    if shape == "diamond":
        return ring(4, 0, r)
    if shape == "triangle":
        return ring(3, -90, r)  # pointing up
    if shape == "hexagon":
        return ring(6, 0, r)
    if shape == "star":
        outer, inner = ring(5, -90, r), ring(5, -54, r * 0.42)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(f"not a polygon shape: {shape}")


def render_scene(scene: Scene, size: tuple[int, int]) -> Image.Image:
    width, height = size
    big = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    cx, cy = scene.cx * big.width, scene.cy * big.height
    r = scene.radius * min(big.size)
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[scene.colour])
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r, scene.rotation), fill=COLOURS[scene.colour])
    small = np.asarray(big.reduce(SUPERSAMPLE), dtype=np.float32)
    # sensor-like noise, seeded per scene (not per size) so 1x and 2x renders look alike
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise_sigma, small.shape)
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, *, quality: int | None = None) -> bytes:
    """Encode with fixed parameters (no metadata, no timestamps) so the bytes are reproducible."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        params = dict(JPEG_PARAMS)
        if quality is not None:
            params["quality"] = quality
        image.convert("RGB").save(buf, "JPEG", **params)
    elif fmt == "png":
        image.save(buf, "PNG", **PNG_PARAMS)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def near_duplicate(data: bytes, variant: str, rng: random.Random) -> tuple[bytes, str]:
    """A perceptually-same copy of an encoded image: ``resize``, ``reencode``, ``crop`` or ``to_png``."""
    image = decode(data)
    if variant == "resize":
        scale = rng.uniform(0.6, 0.85)
        size = (max(48, round(image.width * scale)), max(48, round(image.height * scale)))
        return encode(image.resize(size, Image.Resampling.BICUBIC), "jpeg"), "jpeg"
    if variant == "reencode":
        return encode(image, "jpeg", quality=rng.randrange(55, 75)), "jpeg"
    if variant == "crop":
        dx, dy = round(image.width * rng.uniform(0.03, 0.07)), round(image.height * rng.uniform(0.03, 0.07))
        return encode(image.crop((dx, dy, image.width - dx, image.height - dy)), "jpeg"), "jpeg"
    if variant == "to_png":
        return encode(image, "png"), "png"
    raise ValueError(f"unknown near-duplicate variant {variant!r}")


# Real photos: (skimage.data function, format). Captions come from each loader's docstring first line, which is
# how scikit-image itself describes the picture. All of these ship inside the wheel (no download).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "horse",
    "moon",
    "page",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "colorwheel",
    "cell",
)
PHOTO_MAX_SIDE = 512


@functools.lru_cache(maxsize=None)
def photo(name: str) -> tuple[bytes, str, tuple[int, int]]:
    """(JPEG bytes, caption, size) of a scikit-image sample photo, at most 512 px on its long side."""
    import skimage.data

    loader = getattr(skimage.data, name)
    caption = (loader.__doc__ or name).strip().splitlines()[0].strip()
    array = np.asarray(loader())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array).convert("RGB")
    scale = PHOTO_MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return encode(image, "jpeg"), caption, image.size


# ---- broken files ---------------------------------------------------------------------------------------------


def corrupt_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def truncated(data: bytes, fraction: float) -> bytes:
    """Cut a valid file short: decoders fail on load (or must be told to accept truncated files)."""
    return data[: max(1, int(len(data) * fraction))]


BOMB_SIZE = 30_000


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.lru_cache(maxsize=None)
def decompression_bomb(size: int = BOMB_SIZE) -> bytes:
    """A valid 1-bit greyscale PNG of ``size`` x ``size`` black pixels, ~100 KB on disk.

    Encoding that image with PIL would first allocate it; instead the IDAT stream is built row by row: each row
    is a filter byte plus size/8 zero bytes, fed to zlib in large blocks. Seed-independent, hence cached.
    """
    row = bytes(1 + (size + 7) // 8)
    rows_per_block = 1024
    compressor = zlib.compressobj(9)
    idat = bytearray()
    for start in range(0, size, rows_per_block):
        idat += compressor.compress(row * min(rows_per_block, size - start))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)  # width, height, depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", bytes(idat)) + _png_chunk(b"IEND", b"")
    )


def png_claimed_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, without decoding anything."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Image not available</h1></body></html>\n"
)
