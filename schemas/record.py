"""The sample record that flows between stages, and the reject row every dropped sample becomes.

A record is one row of an Arrow table with the columns of ``RECORD_SCHEMA``; a stage may leave a column null.
Per-stage scores go into ``scores``, a ``map<string, double>`` keyed ``<stage>.<model>.<what>`` (readable as is
by pyarrow, DuckDB and pandas). Beyond these columns a record may carry *extension columns* (``EXTENSION_COLUMNS``:
an embedding, a perceptual hash): a stage declares the ones it adds in its registration
(``schemas.stage_configs.STAGE_KINDS``), later stages carry them through, and a workflow that needs one checks
that an earlier stage adds it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import pyarrow as pa

# Text fields keep their provenance: each HTML/transcript source has its own column, and ``text`` is the caption
# a stage chose, with ``text_source`` naming the column it came from.
TEXT_FIELDS = ("caption", "alt", "title", "figcaption", "transcript")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # stable across runs: derived from the sample's identity
        pa.field("parent", pa.string()),  # key of the record this one was derived from (e.g. a cue clip's audio)
        pa.field("source", pa.string()),  # url_list | page | warc
        pa.field("url", pa.string()),  # the primary asset's URL (image if any, else audio)
        pa.field("page_url", pa.string()),
        pa.field("position", pa.int32()),  # order of the reference on its page / row in its URL list
        # image
        pa.field("image_url", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_format", pa.string()),  # jpg | png | … as detected, normalised by align
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        # audio
        pa.field("audio_url", pa.string()),
        pa.field("audio", pa.binary()),
        pa.field("audio_format", pa.string()),
        pa.field("audio_rate", pa.int32()),
        pa.field("audio_seconds", pa.float64()),
        pa.field("clip_start", pa.float64()),  # cue start/end within the original audio, for cut clips
        pa.field("clip_end", pa.float64()),
        pa.field("subtitles_url", pa.string()),
        pa.field("subtitles", pa.binary()),  # raw VTT/SRT bytes as crawled; align parses them
        pa.field("transcript_url", pa.string()),
        # text, with provenance
        *[pa.field(name, pa.string()) for name in TEXT_FIELDS],
        pa.field("text", pa.string()),
        pa.field("text_source", pa.string()),
        pa.field("scores", pa.map_(pa.string(), pa.float64())),  # {"<stage>.<model>.<what>": score}
    ]
)
RECORD_COLUMNS = tuple(RECORD_SCHEMA.names)
SCORES_TYPE = RECORD_SCHEMA.field("scores").type

# Extension columns by name → how their Arrow type is made. A fixed-size list's size is the producing model's
# (an embedding's width is known once the model is loaded), so the type here is a function of that size.
EXTENSION_COLUMNS: dict[str, Any] = {
    "embedding": lambda size: pa.list_(pa.float32(), size),  # unit-norm image (or audio) embedding
    "phash": lambda _=None: pa.uint64(),  # 64-bit perceptual hash of the decoded image
    # a person's verdict on the pairing (the labels stage): true "match", false "no match", null unlabelled;
    # score stages keep a true one whatever its score (README: Labeling)
    "human_match": lambda _=None: pa.bool_(),
    # personal data the pii stage found and redacted: entity type (and "FACE") -> count; never the values
    "pii": lambda _=None: pa.map_(pa.string(), pa.int32()),
}
# Extension columns of counts (map<string, int>) that a stage's stats.json entry sums over its outcome rows,
# rejected ones included: {"pii": {"EMAIL_ADDRESS": 12, "FACE": 3}}
TALLY_COLUMNS = ("pii",)

# Rows leave a stage with these extra columns: null reason = kept, otherwise the row is a reject. A map stage
# marks the first outcome row of each input record with ``_first``, which is how the runner counts the records
# that entered it (a stage that fans out, e.g. one clip per subtitle cue, writes more rows than it read).
REASON_COLUMN = "_reason"
DETAIL_COLUMN = "_detail"
FIRST_COLUMN = "_first"
OUTCOME_SCHEMA = (
    RECORD_SCHEMA.append(pa.field(REASON_COLUMN, pa.string()))
    .append(pa.field(DETAIL_COLUMN, pa.string()))
    .append(pa.field(FIRST_COLUMN, pa.bool_()))
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("parent", pa.string()),
        pa.field("url", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)


def stable_key(*parts: Any) -> str:
    """A 20-hex-digit key from the parts that identify a sample (no dots: WebDataset splits keys on them)."""
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()[:20]


def empty_record(**values: Any) -> dict[str, Any]:
    """A full record dict with every column present (None where not given); unknown names are an error."""
    unknown = set(values) - set(RECORD_COLUMNS)
    if unknown:
        raise KeyError(f"not record columns: {sorted(unknown)}")
    row = dict.fromkeys(RECORD_COLUMNS)
    row.update(values)
    return row


def scores_of(row: dict[str, Any]) -> dict[str, float]:
    """A row's scores as a dict, whether the row came from Arrow (a list of pairs) or was built as a dict."""
    raw = row.get("scores")
    if not raw:
        return {}
    return dict(raw) if not isinstance(raw, dict) else raw


def record_schema(extensions: pa.Schema | list[pa.Field] = ()) -> pa.Schema:
    """``RECORD_SCHEMA`` plus the extension columns among ``extensions`` (a batch's schema, or fields)."""
    fields = list(RECORD_SCHEMA)
    fields += [f for f in extensions if f.name in EXTENSION_COLUMNS and f.name not in RECORD_COLUMNS]
    return pa.schema(fields)


def outcome_schema(extensions: pa.Schema | list[pa.Field] = ()) -> pa.Schema:
    """The outcome schema of records with ``extensions``: the record columns, then ``_reason/_detail/_first``."""
    schema = record_schema(extensions)
    for name in (REASON_COLUMN, DETAIL_COLUMN, FIRST_COLUMN):
        schema = schema.append(OUTCOME_SCHEMA.field(name))
    return schema


def extension_fields(schema: pa.Schema) -> list[pa.Field]:
    """The extension columns a batch carries."""
    return [f for f in schema if f.name in EXTENSION_COLUMNS]


def outcome_table(rows: list[dict[str, Any]], schema: pa.Schema = OUTCOME_SCHEMA) -> pa.Table:
    """Build a batch in an outcome schema from full row dicts (missing columns become null)."""
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def outcome_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return outcome_table(rows).to_pandas()
