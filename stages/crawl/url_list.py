"""URL lists (CSV / parquet / JSONL with a ``url`` column and an optional caption) downloaded by img2dataset.

The driver streams the list once, numbering rows into parquet chunks (as img2dataset's own reader does), so every
row gets a stable key however the download is later scheduled. The download itself is img2dataset's
``download_image_with_retry`` running in Ray workers, through the fetch guard installed as the process-wide urllib
opener: the same address, redirect, byte, robots.txt and X-Robots-Tag rules as the page crawler.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.json as pajson
import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, outcome_table, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig, UrlListInput
from mmcurate.stages.base import InputError, RecordStage, kept, rejected

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}
CHUNK_ROWS = 2000  # rows downloaded (and remembered as done) together
_BLOCK_BYTES = 64 << 20  # a row (a long caption) must fit in one parse block


def _dataset_format(spec: UrlListInput) -> str:
    if spec.format:
        return {"jsonl": "json"}.get(spec.format, spec.format)
    suffix = Path(spec.path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"url list {spec.path}: cannot tell the format from '{suffix}'; set format: csv|parquet|jsonl")
    return _FORMATS[suffix]


def _file_format(spec: UrlListInput) -> Any:
    fmt = _dataset_format(spec)
    if fmt == "csv":
        # Text columns are read as bytes and decoded row by row: one stray Latin-1 byte must reject its own row,
        # not turn the whole column into binary (whose str() is "b'...'"). Blocks fit a long caption.
        text_columns = [c for c in (spec.url_column, spec.caption_column) if c]
        return pads.CsvFileFormat(
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in text_columns}),
        )
    if fmt == "json":
        return pads.JsonFileFormat(read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES))
    return fmt


def _text(value: Any) -> str | None:
    """A list cell as text; bytes must be UTF-8 (UnicodeDecodeError otherwise)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


def _candidate(spec: UrlListInput, list_index: int, position: int, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(record, True) to download, or (reject outcome row, False) for a row whose text is not UTF-8."""
    raw_url = row[spec.url_column]
    try:
        url = _text(raw_url) or ""
        caption = _text(row.get(spec.caption_column)) if spec.caption_column else None
    except UnicodeDecodeError as err:
        shown = raw_url.decode("utf-8", "backslashreplace") if isinstance(raw_url, bytes) else str(raw_url)
        record = empty_record(key=stable_key("url_list", list_index, position, shown), source="url_list", url=shown,
                              image_url=shown, position=position)
        return rejected(record, Reason.NOT_UTF8, f"{spec.path} row {position}: {err}"), False
    record = empty_record(key=stable_key("url_list", list_index, position, url), source="url_list", url=url,
                          image_url=url, position=position, caption=caption)
    return record, True


def number_url_list(
    spec: UrlListInput, list_index: int, out_dir: Path, chunk_rows: int = CHUNK_ROWS, refused_dir: Path | None = None
) -> int:
    """Write the list's rows as candidate records into ``out_dir`` (parquet chunks) and rows that cannot be
    candidates (text not UTF-8; the rest of a file that stops parsing) as reject outcome rows into ``refused_dir``.
    Return the number of rows, both kinds."""
    if not Path(spec.path).is_file():  # a missing input is the workflow's mistake: fail loudly, naming it
        raise InputError(f"url list {spec.path}: no such file")
    columns = [spec.url_column, *([spec.caption_column] if spec.caption_column else [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    refused: list[dict[str, Any]] = []
    position = 0
    try:
        source = pads.dataset(spec.path, format=_file_format(spec))  # reads the first block to infer a schema
        missing = set(columns) - set(source.schema.names)
        if missing:
            raise InputError(f"url list {spec.path}: no column(s) {sorted(missing)}; it has {source.schema.names}")
        for chunk_number, batch in enumerate(source.to_batches(columns=columns, batch_size=chunk_rows)):
            rows = []
            for row in batch.to_pylist():
                candidate, ok = _candidate(spec, list_index, position, row)
                (rows if ok else refused).append(candidate)
                position += 1
            if rows:
                table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
                pq.write_table(table, out_dir / f"list{list_index}-{chunk_number:06d}.parquet")
    except (pa.ArrowException, OSError) as err:  # ragged rows, mixed JSON types, broken parquet: the rows before stay
        record = empty_record(key=stable_key("url_list", list_index, "unreadable", position), source="url_list",
                              url=spec.path, position=position)
        refused.append(rejected(record, Reason.LIST_MALFORMED, f"{spec.path}: unreadable after row {position}: {err}"))
        position += 1
    if refused:
        if refused_dir is None:
            raise ValueError(f"url list {spec.path}: {len(refused)} rows cannot be candidates and have nowhere to go")
        refused_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(outcome_table(refused), refused_dir / f"list{list_index}.parquet")
    return position


# img2dataset reports failures as strings; our guard's refusals arrive as "<reason>: <detail>" inside them.
_KNOWN_REASONS = "|".join(sorted((r.value for r in Reason), key=len, reverse=True))
_GUARD_REASON = re.compile(rf"\b({_KNOWN_REASONS}): (.*)", re.S)
_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")


def reason_of_download_error(message: str) -> Rejected:
    if m := _GUARD_REASON.search(message):
        return Rejected(m.group(1), m.group(2).rstrip(">"))
    if m := _HTTP_STATUS.search(message):
        return Rejected(Reason.HTTP_ERROR, m.group(1))
    if "X-Robots-Tag" in message:
        return Rejected(Reason.X_ROBOTS_NOAI, message)
    if "timed out" in message.lower():
        return Rejected(Reason.TIMEOUT, message)
    if "redirect" in message.lower():
        return Rejected(Reason.TOO_MANY_REDIRECTS, message)
    return Rejected(Reason.DOWNLOAD_ERROR, message)


class UrlListDownloader(RecordStage[CrawlConfig]):
    """One URL-list row → its image bytes (kept) or a reject row."""


    def setup(self) -> None:
        import os

        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        from img2dataset.downloader import download_image_with_retry

        from mmcurate.stages.crawl.opener import install_global_opener

        # for the life of this worker process, which exists to download: every urlopen in it is guarded
        install_global_opener(self.config.fetch)
        self._download = download_image_with_retry

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        fetch = self.config.fetch
        _, stream, error = self._download(
            (record["key"], record["url"]),
            timeout=fetch.timeout_s,
            retries=fetch.retries,
            user_agent_token=fetch.user_agent_token,
            disallowed_header_directives=list(fetch.disallowed_header_directives),
        )
        if stream is None:
            raise reason_of_download_error(error or "no body")
        body = stream.getvalue() if isinstance(stream, io.BytesIO) else stream.read()
        if not body:
            raise Rejected(Reason.IMAGE_CORRUPT, "zero-byte body")
        return [kept(record, image=body)]
