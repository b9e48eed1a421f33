"""What each method compares, computed once per record in the workers (one decode of each image and clip):

  * ``node``: the record's place in the survivor order (``rank``), unique, and the id it has in every pair and
    component; the smallest node of a group is its survivor, and the key is the node's tail. A record a person
    labelled "match" (``human_match``, the labels stage) ranks before every other: a person's word outranks a
    model's score, and a caption they corrected reaches the shards whatever it scores against its copies.
  * ``pixels`` / ``samples``: digests of the decoded RGB pixels (with the size) and of the decoded audio samples
    (with rate and channels): a re-encoded copy of the same pixels, or a WAV of a FLAC, has the same digest.
  * ``text_norm`` and its digest ``text_digest``: NFKC, case-folded, every run of non-word characters one space.
  * ``phash``: imagehash's 64-bit pHash; ``thumbs``: 16x16 RGB thumbnails of the image and of its centre crops
    (``thumbnail_crops``), for the tiny-image check that follows a pHash match.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import unicodedata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

THUMB = 16  # thumbnail side
THUMB_BYTES = THUMB * THUMB * 3
CROP_STEP = 0.01  # per side, between two thumbnail crops: a 5 % crop lines up within half a percent

SIGNATURE_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("node", pa.string()),
    pa.field("pixels", pa.binary()),
    pa.field("samples", pa.binary()),
    pa.field("text_norm", pa.string()),
    pa.field("text_digest", pa.binary()),
    pa.field("phash", pa.uint64()),
    pa.field("thumbs", pa.binary()),
])

_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str | None) -> str | None:
    if not text:
        return None
    folded = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return folded or None


def digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def _descending(values: np.ndarray) -> np.ndarray:
    """uint64 codes that sort ascending as ``values`` sort descending; NaN (no value) after every number."""
    negated = np.where(np.isnan(values), 0.0, -values).astype(np.float64)
    bits = negated.view(np.uint64)
    codes = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    return np.where(np.isnan(values), np.uint64(0xFFFF_FFFF_FFFF_FFFF), codes)


def rank(keys: list[str], scores: np.ndarray, sizes: np.ndarray, people: list[bool] | None = None) -> list[str]:
    """Survivor order as strings that sort the way the rule says: accepted by a person (``people``), then highest
    score, then largest size, then smallest key (the key is the string's tail, after fixed-width codes, so ties fall
    to plain key order)."""
    score_codes = _descending(scores.astype(np.float64))
    size_codes = np.uint64((1 << 48) - 1) - np.minimum(np.nan_to_num(sizes, nan=0.0), (1 << 48) - 1).astype(np.uint64)
    person_codes = ["0" if accepted else "1" for accepted in (people or [False] * len(keys))]
    return [f"{p}{s:016x}{z:012x}{k}"
            for p, s, z, k in zip(person_codes, score_codes.tolist(), size_codes.tolist(), keys)]


NODE_PREFIX = 29  # hex digits before the key in a node


def key_of(node: str) -> str:
    return node[NODE_PREFIX:]


def survivor_scores(batch: pa.Table, pattern: str | None) -> np.ndarray:
    """Per record, the largest of its scores whose name matches ``pattern``; NaN where none does."""
    out = np.full(batch.num_rows, np.nan)
    if pattern is None or "scores" not in batch.column_names:
        return out
    for i, pairs in enumerate(batch["scores"].to_pylist()):
        matching = [v for k, v in (pairs or []) if fnmatch.fnmatchcase(k, pattern) and v is not None and v == v]
        if matching:
            out[i] = max(matching)
    return out


def accepted_by_people(batch: pa.Table) -> list[bool]:
    """Per record, whether a person labelled it "match" (``human_match``); False without labels."""
    if "human_match" not in batch.column_names:
        return [False] * batch.num_rows
    return [value is True for value in batch["human_match"].to_pylist()]


def sizes(batch: pa.Table) -> np.ndarray:
    """Image pixels, else audio samples (the larger resolution wins), NaN for neither."""
    def column(name: str) -> np.ndarray:
        if name not in batch.column_names:
            return np.full(batch.num_rows, np.nan)
        return batch[name].to_numpy(zero_copy_only=False).astype(np.float64)

    image = column("image_width") * column("image_height")
    audio = column("audio_seconds") * column("audio_rate")
    return np.where(np.isnan(image), audio, image)


def thumbnail_crops(max_crop: float) -> list[float]:
    """Per-side crop fractions the thumbnails are taken at: 0 (the whole image), then every ``CROP_STEP``."""
    steps = int(round(max_crop / CROP_STEP))
    return [round(i * CROP_STEP, 4) for i in range(steps + 1)]


def image_signature(image: Any, crops: list[float] | None) -> tuple[int, bytes | None]:
    """(pHash as an int, the thumbnails of ``crops`` concatenated, or None without crops) of a PIL RGB image."""
    import imagehash
    from PIL import Image

    phash = int(str(imagehash.phash(image)), 16)
    if crops is None:
        return phash, None
    w, h = image.size
    thumbs = [image.resize((THUMB, THUMB), Image.Resampling.BOX, box=(w * c, h * c, w * (1 - c), h * (1 - c)))
              for c in crops]
    return phash, b"".join(t.tobytes() for t in thumbs)


def decode_image(data: bytes) -> Any | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception:  # an image align kept but this decoder refuses takes part in no image method
        return None


def pixel_digest(image: Any) -> bytes:
    w, h = image.size
    return digest(b"RGB", w.to_bytes(4, "little"), h.to_bytes(4, "little"), image.tobytes())


def samples_digest(data: bytes) -> bytes | None:
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="int32", always_2d=True)
    except Exception:  # undecodable audio takes part in no audio method
        return None
    return digest(rate.to_bytes(4, "little"), samples.shape[1].to_bytes(4, "little"),
                   np.ascontiguousarray(samples).tobytes())


def signatures(batch: pa.Table, *, score: str | None, resolution: bool, pixels: bool, samples: bool,
               text: bool, phash: bool, crops: list[float] | None, embedding: bool,
               people_first: bool = True) -> pa.Table:
    """One row of ``SIGNATURE_SCHEMA`` (plus ``embedding`` and ``has_image`` when asked) per record of ``batch``."""
    n = batch.num_rows
    keys = batch["key"].to_pylist()
    size = sizes(batch) if resolution else np.full(n, np.nan)
    nodes = rank(keys, survivor_scores(batch, score), size, accepted_by_people(batch) if people_first else None)
    images = batch["image"].to_pylist() if (pixels or phash) and "image" in batch.column_names else [None] * n
    audios = batch["audio"].to_pylist() if samples and "audio" in batch.column_names else [None] * n
    texts = batch["text"].to_pylist() if text and "text" in batch.column_names else [None] * n
    cols: dict[str, list] = {name: [] for name in SIGNATURE_SCHEMA.names}
    for key, node, image_bytes, audio_bytes, raw_text in zip(keys, nodes, images, audios, texts):
        image = decode_image(image_bytes) if image_bytes else None
        hashed, thumbs = image_signature(image, crops) if (image is not None and phash) else (None, None)
        norm = normalise_text(raw_text)
        cols["key"].append(key)
        cols["node"].append(node)
        cols["pixels"].append(pixel_digest(image) if (image is not None and pixels) else None)
        cols["samples"].append(samples_digest(audio_bytes) if audio_bytes else None)
        cols["text_norm"].append(norm)
        cols["text_digest"].append(digest(norm.encode()) if norm else None)
        cols["phash"].append(hashed)
        cols["thumbs"].append(thumbs)
    table = pa.Table.from_pydict(cols, schema=SIGNATURE_SCHEMA)
    if embedding:
        table = table.append_column("embedding", batch["embedding"])
        # an image record's embedding is its image's; eval images match only those (not an audio embedding)
        has_image = pc.is_valid(batch["image"]) if "image" in batch.column_names else pa.array([False] * n)
        table = table.append_column("has_image", has_image)
    return table
