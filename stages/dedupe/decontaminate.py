"""Eval-set decontamination: every record that matches an item of the evaluation set is dropped
(``eval_contamination``) before any dedupe, whatever else it matches, naming the item it copies.

The eval set is small next to the run: its items are read and signed on the driver (``EvalIndex``), and the index
travels to the workers, where each record is looked up in it: exact pixels, then pHash within the radius (the
same pigeonhole bands as dedupe, as dictionaries; the same tiny-image check), then, with ``semantic``, the
record's image embedding against the eval images' (``eval_semantic.py``: cosine >= ``1 - eps``), then exact
normalised text, then MinHash Jaccard through datasketch's ``MinHashLSH``. Being small, an eval image is indexed under the pHash of each
of its centre crops too (every 1 % per side up to ``perceptual.max_crop``): a copy cropped by 5 % moves a pHash
by up to 24 bits, but lands within a few bits of its original's 5 % crop. Item names: ``<shard>.tar:<member>``, the image's path
under the folder, ``<text file>:<line>`` (two shards of one file name in different folders: their paths under the
shards' common folder instead).
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from mmcurate.schemas.stage_configs import EvalSetConfig, SemanticEvalConfig, TextDedupeConfig
from mmcurate.stages.base import InputError
from mmcurate.stages.dedupe.drops import DROP_SCHEMA, detail
from mmcurate.stages.dedupe.eval_semantic import embed_eval_images, nearest, unit
from mmcurate.stages.dedupe.perceptual import _band_value, band_masks, thumbnail_rms
from mmcurate.stages.dedupe.signatures import (
    digest,
    decode_image,
    image_signature,
    normalise_text,
    pixel_digest,
    thumbnail_crops,
)
from mmcurate.stages.dedupe.text import SCHEME, jaccard, lsh_weights, minhashes



def _image_suffixes() -> tuple[str, ...]:
    """The extensions of the formats Pillow can open here (``.avif``, ``.jfif``, ``.heic`` where a plugin such as
    pillow-heif registers it, ...), less the stub formats it recognises but cannot decode (BUFR, GRIB, HDF5)."""
    from PIL import Image, ImageFile

    Image.init()
    opens = {name for name, (factory, _) in Image.OPEN.items()
             if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    return tuple(sorted(ext.lower() for ext, name in Image.registered_extensions().items() if name in opens))


IMAGE_SUFFIXES = _image_suffixes()
REASON = "eval_contamination"
log = logging.getLogger("mmcurate.stage.dedupe")


@dataclass
class EvalIndex:
    radius: int
    max_rms: float | None
    text_threshold: float | None
    text: TextDedupeConfig
    pixels: dict[bytes, str] = field(default_factory=dict)
    image_items: list[str] = field(default_factory=list)
    thumbs: list[bytes | None] = field(default_factory=list)
    hashes: list[tuple[int, int]] = field(default_factory=list)  # (image position, pHash of one of its crops)
    bands: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # -> positions in ``hashes``
    texts: dict[bytes, str] = field(default_factory=dict)
    text_items: list[str] = field(default_factory=list)
    minhash: np.ndarray | None = None
    lsh: Any = None
    size: int = 0  # items read: images and text lines
    semantic_items: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (eval images x width) unit-norm float32, with ``semantic``
    min_cosine: float | None = None
    model_id: str | None = None  # the model that embedded them, for the summary


def _shard_names(paths: list[str]) -> dict[str, str]:
    """Each shard's name in its items: the file name, or, where two shards share one (``a/eval.tar``,
    ``b/eval.tar``), the path under the shards' common folder, so that their items stay apart."""
    import os

    base = [Path(p).name for p in paths]
    if len(set(base)) == len(base):
        return dict(zip(paths, base))
    real = [os.path.realpath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(r) for r in real])
    return {p: Path(os.path.relpath(r, common)).as_posix() for p, r in zip(paths, real)}


def _eval_images(cfg: EvalSetConfig) -> list[tuple[str, bytes]]:
    import glob

    found = []
    shards = []
    for pattern in cfg.shards:
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise InputError(f"decontaminate.shards: no file matches {pattern}")
        shards += paths
    shards = list(dict.fromkeys(shards))  # a shard two patterns match is read once
    names = _shard_names(shards)
    for path in shards:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                        found.append((f"{names[path]}:{member.name}", tar.extractfile(member).read()))
        except (tarfile.TarError, EOFError) as err:
            raise InputError(f"decontaminate.shards: {path} is not a readable tar shard ({err})") from err
    if cfg.images is not None:
        root = Path(cfg.images)
        if not root.is_dir():
            raise InputError(f"decontaminate.images: {root} is not a folder")
        skipped = []
        # hidden files and folders (macOS's ._a.jpg AppleDouble files, .DS_Store, .git) are no eval items
        for path in sorted(p for p in root.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(root).parts)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path.relative_to(root).as_posix(), path.read_bytes()))
            else:
                skipped.append(path.relative_to(root).as_posix())
        if skipped:
            log.warning("decontaminate.images: %d file(s) of %s are not images by their extension and are skipped: "
                        "%s%s", len(skipped), root, ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    return found


def load_eval_set(cfg: EvalSetConfig, text: TextDedupeConfig, max_rms: float | None, max_crop: float,
                  crops: list[float] | None) -> EvalIndex:
    """Read and sign every item of the eval set (on the driver: an eval set is thousands of items, not a run)."""
    index = EvalIndex(cfg.radius, max_rms, cfg.text_threshold, text)
    masks = band_masks(cfg.radius)
    crop_hashes = thumbnail_crops(max_crop)
    images = _eval_images(cfg)
    if cfg.semantic is not None and not images:
        raise InputError("decontaminate.semantic: the eval set has no image to embed "
                         f"({', '.join(cfg.files()) or 'no file'})")
    if cfg.semantic is not None:
        index.embeddings, index.model_id = embed_eval_images(images, cfg.semantic)
        index.semantic_items = [item for item, _ in images]
        index.min_cosine = 1.0 - cfg.semantic.eps
    for item, data in images:
        index.size += 1
        image = decode_image(data)
        if image is None:
            raise InputError(f"decontaminate: eval image {item} does not decode")
        if cfg.exact:
            index.pixels.setdefault(pixel_digest(image), item)
        if cfg.perceptual:
            _, thumbs = image_signature(image, crops)
            position = len(index.image_items)
            index.image_items.append(item)
            index.thumbs.append(thumbs)
            for crop in crop_hashes:
                w, h = image.size
                phash, _ = image_signature(image.crop((round(w * crop), round(h * crop), w - round(w * crop),
                                                       h - round(h * crop))), None)
                for band, (shift, width) in enumerate(masks):
                    value = int(_band_value(np.array([phash], np.uint64), shift, width)[0])
                    index.bands.setdefault((band, value), []).append(len(index.hashes))
                index.hashes.append((position, phash))
    if cfg.texts is not None:
        path = Path(cfg.texts)
        if not path.is_file():
            raise InputError(f"decontaminate.texts: {path} is not a file")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"decontaminate.texts: {path} is not UTF-8 text ({err})") from err
        lines = [(f"{path.name}:{n}", normalise_text(line)) for n, line in enumerate(content.splitlines(), start=1)]
        lines = [(item, norm) for item, norm in lines if norm]
        index.size += len(lines)
        for item, norm in lines:
            index.texts.setdefault(digest(norm.encode()), item)
        if cfg.text_threshold is not None and lines:
            from datasketch import MinHash, MinHashLSH

            index.text_items = [item for item, _ in lines]
            index.minhash = minhashes([norm for _, norm in lines], text)
            index.lsh = MinHashLSH(threshold=cfg.text_threshold, num_perm=text.num_perm, weights=lsh_weights(text))
            for position, values in enumerate(index.minhash):
                index.lsh.insert(position, MinHash(num_perm=text.num_perm, seed=text.seed, hashvalues=values,
                                                   scheme=SCHEME))
    return index


def _image_match(index: EvalIndex, phash: int, thumbs: bytes | None) -> tuple[str, float, str] | None:
    entries = set()
    for band, (shift, width) in enumerate(band_masks(index.radius)):
        value = int(_band_value(np.array([phash], np.uint64), shift, width)[0])
        entries.update(index.bands.get((band, value), ()))
    nearest: dict[int, int] = {}  # image position -> fewest bits over its crops
    for entry in entries:
        position, other = index.hashes[entry]
        bits = bin(phash ^ other).count("1")
        if bits <= index.radius and bits < nearest.get(position, 65):
            nearest[position] = bits
    best = None
    for position, bits in nearest.items():
        other = index.thumbs[position]
        rms = thumbnail_rms(thumbs, other) if (index.max_rms is not None and thumbs and other) else None
        if rms is not None and rms > index.max_rms:
            continue
        rank = (bits, rms or 0.0, index.image_items[position])
        if best is None or rank < best[0]:
            text = f"phash hamming {bits}" + (f", thumbnail rms {rms:.1f}" if rms is not None else "")
            best = (rank, index.image_items[position], float(bits), text)
    return None if best is None else best[1:]


def _text_match(index: EvalIndex, norm: str) -> tuple[str, float, str] | None:
    from datasketch import MinHash

    values = minhashes([norm], index.text)[0]
    found = index.lsh.query(MinHash(num_perm=index.text.num_perm, seed=index.text.seed, hashvalues=values,
                               scheme=SCHEME))
    scored = [(float(jaccard(values[None], index.minhash[p][None])[0]), index.text_items[p]) for p in found]
    scored = [(s, item) for s, item in scored if s >= index.text_threshold]
    if not scored:
        return None
    similarity, item = min(scored, key=lambda x: (-x[0], x[1]))  # the most similar, then the first item
    return item, similarity, f"minhash jaccard {similarity:.3f}"


def _semantic_matches(table: pa.Table, index: EvalIndex) -> list[tuple[str, float, str] | None]:
    """Per signature row, its best eval image at or above ``min_cosine``: only rows of records with an image,
    whose embedding is the image's (``clip_score`` embeds the audio of a record without one)."""
    found: list[tuple[str, float, str] | None] = [None] * table.num_rows
    if index.embeddings is None:
        return found
    column = table["embedding"].combine_chunks()
    rows = [i for i, (ok, image) in enumerate(zip(column.is_valid().to_pylist(), table["has_image"].to_pylist()))
            if ok and image]
    if not rows:
        return found
    picked = column.take(pa.array(rows, pa.int64()))
    x = unit(picked.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), picked.type.list_size))
    best, cosine = nearest(x, index.embeddings)
    for row, position, value in zip(rows, best.tolist(), cosine.tolist()):
        if value >= index.min_cosine:
            found[row] = (index.semantic_items[position], value, f"embedding cosine {value:.4f}")
    return found


def contaminated(table: pa.Table, index: EvalIndex) -> pa.Table:
    """Drop rows (``DROP_SCHEMA``) of the signature rows in ``table`` that match an eval item."""
    out: dict[str, list] = {name: [] for name in DROP_SCHEMA.names}
    columns = {name: table[name].to_pylist() for name in ("key", "pixels", "phash", "thumbs", "text_digest",
                                                          "text_norm")}
    semantic = _semantic_matches(table, index)
    for key, pixels, phash, thumbs, text_digest, norm, by_meaning in zip(*columns.values(), semantic):
        match = None
        if pixels is not None and pixels in index.pixels:
            match = (index.pixels[pixels], 0.0, "exact pixels", "exact_pixels")
        if match is None and phash is not None and index.hashes:
            found = _image_match(index, phash, thumbs)
            match = None if found is None else (*found, "phash")
        if match is None and by_meaning is not None:
            match = (*by_meaning, "semantic")
        if match is None and text_digest is not None and text_digest in index.texts:
            match = (index.texts[text_digest], 0.0, "exact normalised text", "exact_text")
        if match is None and norm and index.lsh is not None:
            found = _text_match(index, norm)
            match = None if found is None else (*found, "minhash")
        if match is not None:
            item, distance, measures, method = match
            for name, value in zip(DROP_SCHEMA.names, (key, REASON, method, item, distance,
                                                       detail(REASON, item, measures))):
                out[name].append(value)
    return pa.Table.from_pydict(out, schema=DROP_SCHEMA)


def check_semantic_fraction(matched: int, records: int, semantic: SemanticEvalConfig | None) -> None:
    """Fail the stage when semantic eval matches exceed ``semantic.max_fraction`` of the run's records: an eps
    too loose for the model (one that cannot tell instances apart) drops unrelated samples, silently otherwise."""
    if semantic is None or semantic.max_fraction is None or records == 0:
        return
    if matched > semantic.max_fraction * records:
        raise InputError(
            f"decontaminate.semantic: {matched} of {records} records ({matched / records:.1%}) match an eval image "
            f"by embedding (cosine >= {1 - semantic.eps:.4f}, eps {semantic.eps}), more than max_fraction "
            f"{semantic.max_fraction}: eps is too loose for this model ({semantic.model.identity()}); read eps off "
            "the model's cosines of known copies and non-copies, or set decontaminate.semantic.max_fraction: null "
            "to accept it")


def semantic_count(drops: Any) -> int:
    """How many rows of a drop dataset are semantic eval matches (the method column only passes the driver)."""
    return sum(int(pa.compute.sum(pa.compute.equal(batch["method"], "semantic")).as_py() or 0)
               for batch in drops.select_columns(["method"]).iter_batches(batch_format="pyarrow"))


def decontaminate(nodes: Any, index: EvalIndex) -> Any:
    return nodes.map_batches(contaminated, fn_kwargs={"index": index}, batch_format="pyarrow").materialize()
