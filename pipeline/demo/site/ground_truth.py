"""``ground_truth.parquet`` and the URL list: the answer key the crawler, filters and dedupers are scored on.

Both live beside ``site/``, never inside it, so nothing a crawler can fetch leaks the answers.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.pipeline.demo.site.assets import AssetRef

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),  # root-relative path, or an absolute off-site URL
        pa.field("page", pa.string(), nullable=False),  # root-relative path of the page holding it; "" if trusted
        pa.field("kind", pa.string(), nullable=False),  # image | audio
        pa.field("label", pa.string(), nullable=False),  # a Label value
        pa.field("markup", pa.string(), nullable=False),  # img | figure | srcset | audio | figure_audio | list
        pa.field("shown_text", pa.string()),  # alt / figcaption / description; null = no alt attribute at all
        pa.field("title_text", pa.string()),
        pa.field("true_caption", pa.string()),  # what the media really shows / says
        pa.field("duplicate_of", pa.string()),
        pa.field("in_url_list", pa.bool_(), nullable=False),
        # the trusted section (trusted_list.csv, on no page): a filter's training data, left out of evaluations
        pa.field("trusted", pa.bool_(), nullable=False),
        pa.field("real_photo", pa.bool_(), nullable=False),
        pa.field("shape", pa.string()),
        pa.field("colour", pa.string()),
        pa.field("background", pa.string()),
        pa.field("width", pa.int32()),  # pixels (the claimed size, for the decompression bomb)
        pa.field("height", pa.int32()),
        pa.field("media_format", pa.string()),  # jpeg | png | flac | wav
        pa.field("file_exists", pa.bool_(), nullable=False),  # a file is written at site/<url>
        pa.field("sha256", pa.string()),  # of that file
        pa.field("expected_status", pa.int32()),  # what the demo server answers; null = no answer
        pa.field("figure_id", pa.string()),  # ties an image to its narration
        pa.field("subtitle_url", pa.string()),
        pa.field("subtitle_format", pa.string()),  # vtt | srt
        pa.field("cue_start_ms", pa.list_(pa.int32())),
        pa.field("cue_end_ms", pa.list_(pa.int32())),
        pa.field("cue_texts", pa.list_(pa.string())),
    ]
)
URL_LIST_SCHEMA = pa.schema(
    [pa.field("url", pa.string(), nullable=False), pa.field("caption", pa.string(), nullable=False)]
)


def row(ref: AssetRef) -> dict:
    return {
        "url": ref.url,
        "page": ref.page,
        "kind": ref.kind,
        "label": ref.label.value,
        "markup": ref.markup,
        "shown_text": ref.shown_text,
        "title_text": ref.title_text,
        "true_caption": ref.true_caption,
        "duplicate_of": ref.duplicate_of,
        "in_url_list": ref.in_url_list,
        "trusted": ref.trusted,
        "real_photo": ref.real_photo,
        "shape": ref.shape,
        "colour": ref.colour,
        "background": ref.background,
        "width": ref.width,
        "height": ref.height,
        "media_format": ref.media_format,
        "file_exists": ref.body is not None,
        "sha256": hashlib.sha256(ref.body).hexdigest() if ref.body is not None else None,
        "expected_status": ref.expected_status,
        "figure_id": ref.figure_id,
        "subtitle_url": ref.subtitle_url,
        "subtitle_format": ref.subtitle_format,
        "cue_start_ms": [c.start_ms for c in ref.cues] if ref.cues else None,
        "cue_end_ms": [c.end_ms for c in ref.cues] if ref.cues else None,
        "cue_texts": [c.text for c in ref.cues] if ref.cues else None,
    }


def write_ground_truth(refs: Iterable[AssetRef], path: Path) -> None:
    table = pa.Table.from_pylist([row(r) for r in refs], schema=GROUND_TRUTH_SCHEMA)
    pq.write_table(table, path)


def read_ground_truth(root: Path) -> pa.Table:
    return pq.read_table(Path(root) / "ground_truth.parquet")


def write_url_table(rows: list[tuple[str, str]], out_path: Path) -> None:
    """``.csv`` or ``.parquet`` by suffix, columns ``url`` and ``caption``."""
    out_path = Path(out_path)
    if out_path.suffix == ".parquet":
        table = pa.Table.from_pylist([{"url": u, "caption": c} for u, c in rows], schema=URL_LIST_SCHEMA)
        pq.write_table(table, out_path)
    elif out_path.suffix == ".csv":
        with out_path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("url", "caption"))
            writer.writerows(rows)
    else:
        raise ValueError(f"URL list must be .csv or .parquet, not {out_path.name}")


URL_LIST, TRUSTED_LIST = "url_list", "trusted_list"  # root/<name>.csv and .parquet


def write_url_list(root: Path, base_url: str, out_path: Path, *, listing: str = URL_LIST) -> Path:
    """Turn ``root/<listing>.parquet`` (site paths; ``listing``: ``URL_LIST`` or ``TRUSTED_LIST``) into absolute
    URLs on a running server at ``base_url``.

    The site is built before any server exists, so the stored list holds paths; off-site URLs stay as they are.
    """
    table = pq.read_table(Path(root) / f"{listing}.parquet", schema=URL_LIST_SCHEMA)
    base = base_url.rstrip("/")
    rows = [
        (base + u if u.startswith("/") else u, c)
        for u, c in zip(table.column("url").to_pylist(), table.column("caption").to_pylist())
    ]
    write_url_table(rows, out_path)
    return Path(out_path)
