"""A response body read with a byte cap: ``max_bytes + 1`` bytes at most are taken from the network."""

from __future__ import annotations

import http.client
from typing import Any

from mmcurate.schemas.reasons import Reason, Rejected

_READ_CHUNK = 64 * 1024


def refuse_declared_length(response: Any, max_bytes: int) -> None:
    """A Content-Length above the cap is refused before a byte of the body is read."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        response.close()
        raise Rejected(Reason.BODY_TOO_LARGE, f"Content-Length {declared} > {max_bytes}")


class CappedResponse:
    """Wraps an ``http.client.HTTPResponse`` so that reads stop at ``max_bytes + 1``.

    Every other attribute (``status``, ``headers``, ``url``, ``getcode()``, ``info()``) is the wrapped response's.
    Time is not this class's concern: the socket underneath gives up at the fetch deadline (``connection.py``).
    """

    def __init__(self, response: http.client.HTTPResponse, max_bytes: int):
        self._response = response
        self._max_bytes = max_bytes
        self._bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def __enter__(self) -> CappedResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()

    def read1(self, size: int = -1) -> bytes:
        room = self._max_bytes + 1 - self._bytes_read  # one byte past the cap is how we know it is too large
        chunk = self._response.read1(room if size is None or size < 0 else min(size, room))
        self._bytes_read += len(chunk)
        if self._bytes_read > self._max_bytes:
            self.close()
            raise Rejected(Reason.BODY_TOO_LARGE, f"body exceeds {self._max_bytes} bytes")
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        wanted = -1 if size is None or size < 0 else size
        got = 0
        while wanted < 0 or got < wanted:
            chunk = self.read1(_READ_CHUNK if wanted < 0 else min(_READ_CHUNK, wanted - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)
