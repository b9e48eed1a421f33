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
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig, UrlListInput
from mmcurate.stages.base import RecordStage, kept

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}
CHUNK_ROWS = 2000  # rows downloaded (and remembered as done) together


def _dataset_format(spec: UrlListInput) -> str:
    if spec.format:
        return {"jsonl": "json"}.get(spec.format, spec.format)
    suffix = Path(spec.path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"url list {spec.path}: cannot tell the format from '{suffix}'; set format: csv|parquet|jsonl")
    return _FORMATS[suffix]


def number_url_list(spec: UrlListInput, list_index: int, out_dir: Path, chunk_rows: int = CHUNK_ROWS) -> int:
    """Write the list's rows as candidate records into ``out_dir`` (parquet chunks); return the row count."""
    source = pads.dataset(spec.path, format=_dataset_format(spec))
    missing = {spec.url_column, *([spec.caption_column] if spec.caption_column else [])} - set(source.schema.names)
    if missing:
        raise ValueError(f"url list {spec.path}: no column(s) {sorted(missing)}; it has {source.schema.names}")
    columns = [spec.url_column, *([spec.caption_column] if spec.caption_column else [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    position = 0
    for chunk_number, batch in enumerate(source.to_batches(columns=columns, batch_size=chunk_rows)):
        rows = []
        for row in batch.to_pylist():
            url = str(row[spec.url_column]) if row[spec.url_column] is not None else ""
            caption = row.get(spec.caption_column) if spec.caption_column else None
            rows.append(
                empty_record(
                    key=stable_key("url_list", list_index, position, url),
                    source="url_list",
                    url=url,
                    image_url=url,
                    position=position,
                    caption=None if caption is None else str(caption),
                )
            )
            position += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out_dir / f"list{list_index}-{chunk_number:06d}.parquet")
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

    kind = "crawl"
    num_cpus = 0.5  # waits on the network, not the CPU

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
