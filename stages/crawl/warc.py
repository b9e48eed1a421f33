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

Bodies are streamed, never held for the whole archive: the iterator decodes a body only when the caller asks for
it (``read_body``), with a cap (``warc_payload.py``), and reports where each record starts so that
``read_response_at`` can come back for one body later without reading the archive again.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.limitreader import LimitReader
from warcio.statusandheaders import StatusAndHeadersParserException

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.warc_payload import read_payload

_TAIL_KEPT = 64 * 1024  # enough to see what follows the last good record


@dataclass(frozen=True)
class WarcResponse:
    url: str
    status: int
    headers: dict[str, str]  # HTTP headers, lower-cased names; repeated headers joined with ", "
    record_id: str | None  # WARC-Record-ID: the identity of this capture
    offset: int  # where the record starts in the file (its gzip member, in a .warc.gz)
    truncated: str | None = None  # the WARC-Truncated header ("length", "time", …) when the archive cut the body
    body: bytes | None = None  # the payload with transfer- and content-encoding undone, when it was read
    refusal: tuple[str, str] | None = None  # (reason, detail) when the body was asked for but could not be had

    def payload(self) -> bytes:
        """The body, or the ``Rejected`` that kept it (BODY_TOO_LARGE past the cap, WARC_MALFORMED)."""
        if self.refusal is not None:
            raise Rejected(*self.refusal)
        if self.body is None:
            raise ValueError(f"the body of {self.url} was not read")
        return self.body


class _CountingReader:
    """Passes reads through, counting bytes and keeping the last ``_TAIL_KEPT`` of them."""

    def __init__(self, stream: BinaryIO, start: int = 0):
        self._stream = stream
        self.position = start
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


def _always(url: str, headers: dict[str, str]) -> bool:
    return True


BodyWanted = Callable[[str, dict[str, str]], bool]  # (url, headers) -> read this response's body?


def _iter_from(
    reader: _CountingReader, max_bytes: int, read_body: BodyWanted, first_only: bool = False
) -> Iterator[WarcResponse]:
    good = 0
    end_of_good = reader.position  # offset just past the last intact record
    archive = ArchiveIterator(reader)
    try:
        for record in archive:
            fields = None
            target = record.rec_headers.get_header("WARC-Target-URI") or ""
            # A header block cut short still parses; without a type or a length it is not a record.
            declared_length = (record.rec_headers.get_header("Content-Length") or "").strip()
            if not record.rec_type or not declared_length.isdigit():
                raise ValueError(f"record header without WARC-Type or Content-Length near {target or '?'}")
            if record.rec_type == "response" and record.http_headers is not None and target.startswith("http"):
                status_line = record.http_headers.get_statuscode()
                if not (status_line or "").isdigit():
                    raise ValueError(f"HTTP status {status_line!r} of {target}")
                headers = _http_headers(record)
                body, refusal = None, None
                if read_body(target, headers):
                    try:
                        body = read_payload(record.raw_stream, headers, max_bytes)
                    except Rejected as rej:  # this body only; the archive reads on
                        refusal = (rej.reason, rej.detail)
                fields = {
                    "url": target, "status": int(status_line), "headers": headers, "body": body, "refusal": refusal,
                    "record_id": record.rec_headers.get_header("WARC-Record-ID"),
                    "truncated": record.rec_headers.get_header("WARC-Truncated"),
                }  # fmt: skip
            offset, length = archive.get_record_offset(), archive.get_record_length()  # reads the record to its end
            if isinstance(record.raw_stream, LimitReader) and record.raw_stream.limit > 0:
                raise EOFError(f"record of {target or record.rec_type} ends {record.raw_stream.limit} bytes early")
            good += 1
            end_of_good = offset + length
            if fields is not None:
                yield WarcResponse(offset=offset, **fields)
            if first_only:
                return
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


def iter_warc_responses(
    source: str | os.PathLike[str] | BinaryIO, max_bytes: int, read_body: BodyWanted = _always
) -> Iterator[WarcResponse]:
    """Yield the HTTP responses of a WARC file; raise ``Rejected(WARC_MALFORMED)`` where it is damaged.

    ``source`` is a path or a binary file object (read sequentially; it need not be seekable). A response's body
    is decoded (at most ``max_bytes``) only when ``read_body(url, headers)`` says so.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            yield from _iter_from(_CountingReader(stream), max_bytes, read_body)
    else:
        yield from _iter_from(_CountingReader(source), max_bytes, read_body)


def read_response_at(path: str | os.PathLike[str], offset: int, max_bytes: int) -> WarcResponse:
    """The response record starting at ``offset`` (as ``iter_warc_responses`` reported it), body read."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        for response in _iter_from(_CountingReader(stream, start=offset), max_bytes, _always, first_only=True):
            return response
    raise Rejected(Reason.WARC_MALFORMED, f"no HTTP response record at byte {offset} of {os.fspath(path)}")
