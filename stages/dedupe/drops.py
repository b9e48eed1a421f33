"""The drop table: one row per record a dedupe method drops (key, reason, method, the survivor's key or the eval
item, the distance, the detail its reject row carries), written by ``summarize`` under the stage's progress
and published as ``DIR/<stage>/artifacts/drops.parquet``; ``decide`` looks each batch's keys up in it.

A detail reads ``<reason> of <survivor key> (<method> <measure> <value>[, ...])``, e.g.
``near_duplicate of 3f2a… (phash hamming 3, thumbnail rms 2.1)``, or for the eval set
``eval_contamination: eval item <item> (<method> …)``; ``survivor_of`` reads the key back (``mmcurate explain``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DROP_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("method", pa.string()),  # exact_pixels | exact_samples | exact_text | phash | semantic | minhash
    pa.field("other", pa.string()),  # the survivor's key, or the eval item
    pa.field("distance", pa.float64()),  # Hamming bits, cosine similarity, Jaccard similarity; 0 for exact
    pa.field("detail", pa.string()),
])
DROPS_FILE = "drops.parquet"
REASONS = frozenset({"duplicate", "near_duplicate", "semantic_duplicate", "text_duplicate", "eval_contamination"})

_DETAIL = re.compile(r"^(?P<reason>\w+) of (?P<key>\S+) \(")
# the item runs to the last " (": an item's name may hold one ("exact 0 (1).png"), the measures never do
_EVAL = re.compile(r"^eval_contamination: eval item (?P<item>.+) \([^()]*\)$", re.DOTALL)


def detail(reason: str, other: str, measures: str) -> str:
    if reason == "eval_contamination":
        return f"eval_contamination: eval item {other} ({measures})"
    return f"{reason} of {other} ({measures})"


def survivor_of(text: str | None) -> str | None:
    """The survivor's key a dedupe detail names, None for any other detail."""
    match = _DETAIL.match(text or "")
    return match.group("key") if match else None


def eval_item_of(text: str | None) -> str | None:
    match = _EVAL.match(text or "")
    return match.group("item") if match else None


def write_drops(datasets: list[Any], path: Path) -> dict[str, int]:
    """Stream every drop dataset into one parquet file, sorted by key (so the file does not depend on the number of
    workers); return the counts by reason. Rows pass the driver a batch at a time, never all at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    counts: dict[str, int] = {}
    nonempty = [d for d in datasets if d.count()]
    with pq.ParquetWriter(tmp, DROP_SCHEMA) as writer:
        if nonempty:
            everything = nonempty[0].union(*nonempty[1:]) if len(nonempty) > 1 else nonempty[0]
            for batch in everything.sort("key").iter_batches(batch_format="pyarrow", batch_size=65_536):
                table = batch.select(DROP_SCHEMA.names).cast(DROP_SCHEMA)
                writer.write_table(table)
                for reason in table["reason"].to_pylist():
                    counts[reason] = counts.get(reason, 0) + 1
    tmp.replace(path)
    return dict(sorted(counts.items()))


def read_drops(path: str | Path) -> dict[str, tuple[str, str]]:
    """key -> (reason, detail) of every drop; about 200 bytes a drop in each worker that decides."""
    table = pq.read_table(path, columns=["key", "reason", "detail"])
    return dict(zip(table["key"].to_pylist(), zip(table["reason"].to_pylist(), table["detail"].to_pylist())))
