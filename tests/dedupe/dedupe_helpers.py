"""Real photos (scikit-image ships them), the copies a crawl meets (re-encoded, resized, cropped by 5 %, PNG), and
records built from them."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "clock", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel", "horse", "page", "text", "cell")
SIZE = (240, 180)


def photos() -> dict[str, Image.Image]:
    """Distinct originals: each photo at 240x180, and mirrored (a mirror is another picture to a pHash)."""
    import skimage.data

    out = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        if array.dtype != np.uint8:
            array = (array / array.max() * 255).astype(np.uint8) if array.dtype != bool else array.astype(np.uint8) * 255
        image = Image.fromarray(array).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
        out[name] = image
        out[f"{name}-mirror"] = ImageOps.mirror(image)
    return out


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def cropped(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * fraction), round(h * fraction)
    return image.crop((dx, dy, w - dx, h - dy))


def resized(image: Image.Image, scale: float = 0.7) -> Image.Image:
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def variants(original: bytes) -> dict[str, bytes]:
    """The copies of an encoded original, by how they were made. ``same_pixels`` decode to its pixels exactly;
    the others are perceptual copies only."""
    image = decoded(original)
    return {
        "renamed": original,  # byte-identical, another URL
        "png": png(image),  # lossless: the same pixels in another container
        "jpeg_q60": jpeg(image, 60),
        "resized": jpeg(resized(image)),
        "cropped": jpeg(cropped(image)),
    }


SAME_PIXELS = {"renamed", "png"}


def record(name: str, data: bytes, text: str | None = None, score: float | None = None, **extra) -> dict:
    image = decoded(data)
    scores = {} if score is None else {"clip_score.tiny-0000.image_text": score}
    row = empty_record(key=stable_key("dedupe-test", name), url=f"http://127.0.0.1/{name}", image=data,
                       image_format="png" if data[:4] == b"\x89PNG" else "jpg", image_width=image.width,
                       image_height=image.height, text=text or f"a picture called {name}", scores=scores)
    return {**row, **extra}  # extension columns (embedding) beside the record's


def table(records: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(records), schema=RECORD_SCHEMA)
