"""HTTP responses out of a WARC file (gzip or plain), for crawling from an archive instead of the network.

Damage is reported, never swallowed: ``iter_warc_responses`` yields every intact response record in file order
and, on reaching damage, raises ``Rejected(Reason.WARC_MALFORMED)`` naming how many records were good and where
it broke. The caller catches it, writes one reject row for the file, and keeps what was already yielded.

warcio alone reads a truncated file *silently*: a cut plain record comes back with a short body, and a cut gzip
member is dropped without a word. So after each record we check that its block was read to its declared
length, and at the end that nothing but blank lines follows the last good record.

Records that are not HTTP responses (request, metadata, revisit, ``dns:`` responses) are read past, not
yielded. ``WarcResponse.truncated`` carries the archive's own ``WARC-Truncated`` header (Common Crawl truncates
bodies over 1 MiB): such a body is incomplete by design, and the caller decides whether that is acceptable.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.limitreader import LimitReader
from warcio.statusandheaders import StatusAndHeadersParserException

from mmcurate.schemas.reasons import Reason, Rejected

_TAIL_KEPT = 64 * 1024  # enough to see what follows the last good record


@dataclass(frozen=True)
class WarcResponse:
    url: str
    status: int
    headers: dict[str, str]  # HTTP headers, lower-cased names; repeated headers joined with ", "
    body: bytes  # the payload with transfer- and content-encoding undone (dechunked, gunzipped)
    truncated: str | None = None  # the WARC-Truncated header ("length", "time", …) when the archive cut the body


class _CountingReader:
    """Passes reads through, counting bytes and keeping the last ``_TAIL_KEPT`` of them."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.position = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.position += len(data)
        self.tail = (self.tail + data)[-_TAIL_KEPT:]
        return data

    def tell(self) -> int:
        return self.position

    def drain(self) -> None:
        while self.read(_TAIL_KEPT):
            pass


def _http_headers(record) -> dict[str, str]:  # type: ignore[no-untyped-def]
    headers: dict[str, list[str]] = {}
    for name, value in record.http_headers.headers:
        headers.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in headers.items()}


def _iter_from(reader: _CountingReader) -> Iterator[WarcResponse]:
    good = 0
    end_of_good = 0  # offset just past the last intact record
    archive = ArchiveIterator(reader)
    try:
        for record in archive:
            response = None
            target = record.rec_headers.get_header("WARC-Target-URI") or ""
            # A header block cut short still parses; without a type or a length it is not a record.
            declared_length = (record.rec_headers.get_header("Content-Length") or "").strip()
            if not record.rec_type or not declared_length.isdigit():
                raise ValueError(f"record header without WARC-Type or Content-Length near {target or '?'}")
            if record.rec_type == "response" and record.http_headers is not None and target.startswith("http"):
                body = record.content_stream().read()
                status_line = record.http_headers.get_statuscode()
                if not (status_line or "").isdigit():
                    raise ValueError(f"HTTP status {status_line!r} of {target}")
                response = WarcResponse(
                    url=target,
                    status=int(status_line),
                    headers=_http_headers(record),
                    body=body,
                    truncated=record.rec_headers.get_header("WARC-Truncated"),
                )
            offset, length = archive.get_record_offset(), archive.get_record_length()  # reads the record to its end
            if isinstance(record.raw_stream, LimitReader) and record.raw_stream.limit > 0:
                raise EOFError(f"record of {target or record.rec_type} ends {record.raw_stream.limit} bytes early")
            good += 1
            end_of_good = offset + length
            if response is not None:
                yield response
        reader.drain()
        unread = reader.position - end_of_good
        if unread > 0 and (unread > len(reader.tail) or reader.tail[-unread:].strip()):
            raise EOFError(f"{unread} bytes after the last complete record are not a record")
    # AttributeError: warcio trips over a header block cut before WARC-Target-URI (None.startswith).
    except (
        ArchiveLoadFailed,
        StatusAndHeadersParserException,
        EOFError,
        ValueError,
        AttributeError,
        zlib.error,
    ) as err:
        raise Rejected(
            Reason.WARC_MALFORMED, f"after {good} good records, at byte {end_of_good}: {type(err).__name__}: {err}"
        ) from None


def iter_warc_responses(source: str | os.PathLike[str] | BinaryIO) -> Iterator[WarcResponse]:
    """Yield the HTTP responses of a WARC file; raise ``Rejected(WARC_MALFORMED)`` where it is damaged.

    ``source`` is a path or a binary file object (read sequentially; it need not be seekable).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            yield from _iter_from(_CountingReader(stream))
    else:
        yield from _iter_from(_CountingReader(source))
