"""Synthetic paired data whose caption describes the media: coloured shapes ("a red circle") and tones
("a high beep"). For smoke tests and loader benchmarks, where a model must be able to learn the pairing on a CPU
in seconds. Records follow the shard writer's input (``mmcurate.stages.shard.write_shards``)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np

COLOURS = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230), "yellow": (235, 220, 40),
    "purple": (150, 40, 200), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0}
TIMBRES = ("beep", "buzz")


def _key(seed: int, i: int) -> str:
    return hashlib.sha1(f"{seed}:{i}".encode()).hexdigest()[:16]


def shape_image(colour: str, shape: str, rng: np.random.Generator, size: int = 32, fmt: str = "png") -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(size // 4, size // 2 - 1))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
    out = io.BytesIO()
    img.save(out, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return out.getvalue()


def tone_flac(pitch: str, timbre: str, rng: np.random.Generator, rate: int = 16_000, seconds: float = 1.0) -> bytes:
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    f = PITCHES[pitch] * float(rng.uniform(0.97, 1.03))
    wave = np.sin(2 * np.pi * f * t) if timbre == "beep" else np.sign(np.sin(2 * np.pi * f * t))
    wave = 0.3 * wave + 0.01 * rng.standard_normal(len(t))
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), rate, format="FLAC")
    return out.getvalue()


def records(
    n: int, *, seed: int = 0, audio_every: int = 0, image_size: int = 32, audio_rate: int = 16_000
) -> Iterator[dict[str, Any]]:
    """``n`` records; with ``audio_every=k`` every k-th record is an audio+text tone instead of an image."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = {
            "key": _key(seed, i), "url": f"synthetic://{seed}/{i}", "page_url": None, "text_source": "caption",
            "image": None, "image_format": None, "image_width": None, "image_height": None,
            "audio": None, "audio_rate": None, "audio_seconds": None, "clip_start": None, "clip_end": None,
            "scores": {},
        }
        if audio_every and i % audio_every == 0:
            pitch, timbre = rng.choice(list(PITCHES)), rng.choice(TIMBRES)
            base |= {"text": f"a {pitch} {timbre}", "audio": tone_flac(pitch, timbre, rng, audio_rate),
                     "audio_rate": audio_rate, "audio_seconds": 1.0, "clip_start": 0.0, "clip_end": 1.0}
        else:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            base |= {"text": f"a {colour} {shape}", "image": shape_image(colour, shape, rng, image_size),
                     "image_format": "png", "image_width": image_size, "image_height": image_size}
        yield base


def draw_shape(draw: Any, shape: str, cx: int, cy: int, r: int, fill: tuple[int, int, int]) -> None:
    """A filled circle, square or triangle of half-size ``r`` centred on (cx, cy)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
