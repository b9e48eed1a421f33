"""An archived HTTP payload with transfer- and content-encoding undone, never more than ``max_bytes + 1`` decoded.

Why not warcio's ``content_stream()``: it inflates each 16 KiB block, and each whole HTTP chunk, in one
``decompress`` call with no output limit, so a record of a few hundred bytes can become tens of megabytes in one
step, and its ``read()`` keeps all of it. Here the dechunker reads at most ``_STEP`` raw bytes at a time and
``zlib`` is asked for at most the bytes still allowed, so memory stays within the cap plus a few steps.

Leniency follows warcio's, because archives are written by many tools: a payload whose first chunk-size line does
not parse is taken as not chunked (some tools store the dechunked body but keep the header), and one whose first
bytes are not the compressed format its Content-Encoding names is taken as stored decoded. Damage later in a
payload is an error (WARC_MALFORMED for that record), not a silent cut.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from mmcurate.schemas.reasons import Reason, Rejected

_STEP = 64 * 1024


def _raw(stream: Any) -> Iterator[bytes]:
    while piece := stream.read(_STEP):
        yield piece


def _dechunked(stream: Any) -> Iterator[bytes]:
    first = True
    while True:
        line = stream.readline(64)
        if not line:
            return  # the record ends here; a cut record is reported by the record's own length check
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
            if not line.endswith(b"\n") or size < 0:
                raise ValueError(line)
        except ValueError:
            if not first:
                raise Rejected(Reason.WARC_MALFORMED, f"chunked payload: bad chunk-size line {line[:20]!r}") from None
            yield line  # not chunked after all
            yield from _raw(stream)
            return
        first = False
        if size == 0:
            return
        while size:
            piece = stream.read(min(size, _STEP))
            if not piece:
                return  # cut inside a chunk: the record's own length check reports a cut record
            size -= len(piece)
            yield piece
        stream.readline(64)  # the CRLF after the chunk


def _too_large(max_bytes: int) -> Rejected:
    return Rejected(Reason.BODY_TOO_LARGE, f"decoded body exceeds {max_bytes} bytes")


def _identity(pieces: Iterator[bytes], max_bytes: int) -> bytes:
    out = bytearray()
    for piece in pieces:
        out += piece
        if len(out) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(out)


def _inflated(pieces: Iterator[bytes], wbits: int, max_bytes: int) -> bytes:
    out = bytearray()
    decoder = zlib.decompressobj(wbits)
    for piece in pieces:
        data = piece
        while data and not decoder.eof:
            try:
                # max_length is never 0 here (0 would mean "no limit"): we stop as soon as out passes the cap
                out += decoder.decompress(data, max_bytes + 1 - len(out))
            except zlib.error as err:
                raise Rejected(Reason.WARC_MALFORMED, f"payload does not inflate after {len(out)} bytes: {err}") from None
            if len(out) > max_bytes:
                raise _too_large(max_bytes)
            data = decoder.unconsumed_tail
        if decoder.eof:
            break  # what follows a complete gzip member is ignored, as browsers and warcio do
    # a stream that stops early (an archive's WARC-Truncated body) gives what it had
    return bytes(out)


def _head(pieces: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """At least the first two bytes (if there are two), and an iterator over the whole payload again."""
    head = b""
    for piece in pieces:
        head += piece
        if len(head) >= 2:
            break

    def again() -> Iterator[bytes]:
        yield head
        yield from pieces

    return head, again()


def _is_zlib(head: bytes) -> bool:
    return len(head) >= 2 and head[0] & 0x0F == 8 and ((head[0] << 8) | head[1]) % 31 == 0  # RFC 1950 header


def read_payload(stream: Any, headers: dict[str, str], max_bytes: int) -> bytes:
    """The payload of an HTTP response whose headers have been read from ``stream`` (warcio's ``raw_stream``).

    ``headers``: lower-cased names. Raises ``Rejected``: BODY_TOO_LARGE past ``max_bytes`` decoded bytes,
    WARC_MALFORMED when the payload breaks part-way.
    """
    transfer = [token.strip().lower() for token in headers.get("transfer-encoding", "").split(",")]
    head, pieces = _head(_dechunked(stream) if "chunked" in transfer else _raw(stream))
    encoding = headers.get("content-encoding", "").strip().lower()
    # The first bytes say whether the label is true: stores of the inflated body under the original header exist.
    if encoding in ("gzip", "x-gzip") and head.startswith(b"\x1f\x8b"):
        return _inflated(pieces, 16 + zlib.MAX_WBITS, max_bytes)
    if encoding == "deflate" and _is_zlib(head):
        return _inflated(pieces, zlib.MAX_WBITS, max_bytes)
    if encoding == "deflate":  # many servers send a raw deflate stream, without the zlib header
        try:
            zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, 1)
        except zlib.error:
            return _identity(pieces, max_bytes)
        return _inflated(pieces, -zlib.MAX_WBITS, max_bytes)
    # identity, or an encoding we cannot undo (br, "gzip, gzip"): passed on as it is; the media decoder will say so
    return _identity(pieces, max_bytes)
