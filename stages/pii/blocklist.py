"""The ``blocklist`` stage: samples whose media is on a hash list are rejected with reason ``blocklist``.

``sha256`` lists hold hex digests of media bytes as they are when the stage sees them: right after the crawl,
the bytes as published (what shared hash lists name); after align, its re-encoded bytes. ``phash`` lists hold
64-bit imagehash pHashes (16 hex digits), matched within ``phash_radius`` bits, which survive re-encoding and
resizing. A list is a local file (its bytes are in the stage's fingerprint) or an http(s) URL, downloaded once per
worker (``setup``) with a timeout and a size cap; a remote list is not fingerprinted: a list that changes upstream
needs a new run directory. A missing or malformed list fails the stage (an ``InputError``), naming the list and
line: a blocklist that silently blocks nothing is worse than none.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import BlocklistConfig
from mmcurate.stages.base import BatchStage, Decisions, InputError

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_PHASH = re.compile(r"^[0-9a-fA-F]{16}$")


def read_list(where: str, max_bytes: int) -> list[tuple[int, str]]:
    """(line number, entry) of a list: one entry a line, ``#`` comments and blank lines skipped."""
    if "://" in where:
        import urllib.request

        if not where.startswith(("http://", "https://")):
            raise InputError(f"blocklist: {where}: only local files and http(s) URLs are read")
        try:
            with urllib.request.urlopen(where, timeout=30) as answer:  # noqa: S310 - scheme checked above
                body = answer.read(max_bytes + 1)
        except OSError as err:
            raise InputError(f"blocklist: {where}: cannot download: {err}") from None
    else:
        try:
            body = Path(where).read_bytes()
        except OSError as err:
            raise InputError(f"blocklist: {where}: cannot read: {err.strerror}") from None
    if len(body) > max_bytes:
        raise InputError(f"blocklist: {where}: larger than max_list_bytes ({max_bytes})")
    entries = []
    for number, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append((number, entry))
    return entries


def _popcount(values: np.ndarray) -> np.ndarray:
    # bit count of uint64s, 8 bits at a time through a table
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[values.view(np.uint8).reshape(-1, 8)].sum(axis=1)


class BlocklistStage(BatchStage[BlocklistConfig]):
    sha256: dict[str, str] | None = None

    def setup(self) -> None:
        self.sha256 = {}
        for where in self.config.sha256:
            for number, entry in read_list(where, self.config.max_list_bytes):
                if not _SHA256.match(entry):
                    raise InputError(f"blocklist: {where}:{number}: not a sha256 hex digest: {entry[:80]!r}")
                self.sha256[entry.lower()] = where
        phashes, self.phash_lists = [], []
        for where in self.config.phash:
            for number, entry in read_list(where, self.config.max_list_bytes):
                if not _PHASH.match(entry):
                    raise InputError(f"blocklist: {where}:{number}: not a 16-hex-digit pHash: {entry[:80]!r}")
                phashes.append(int(entry, 16))
                self.phash_lists.append(where)
        self.phashes = np.array(phashes, np.uint64)

    def _phash_match(self, data: bytes) -> tuple[str, int] | None:
        if not len(self.phashes):
            return None
        import imagehash
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                value = int(str(imagehash.phash(image.convert("RGB"))), 16)
        except Exception:  # noqa: BLE001 - an image that does not decode is align's to reject, with its reason
            return None
        distances = _popcount(np.bitwise_xor(self.phashes, np.uint64(value)))
        best = int(np.argmin(distances))
        if distances[best] <= self.config.phash_radius:
            return self.phash_lists[best], int(distances[best])
        return None

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.sha256 is None:
            self.setup()
        decisions = Decisions(batch)
        images = batch["image"].to_pylist()
        audio = batch["audio"].to_pylist()
        hits: list[str | None] = []
        for image, clip in zip(images, audio):
            hit = None
            for column, data in (("image", image), ("audio", clip)):
                if data is not None and (where := self.sha256.get(hashlib.sha256(data).hexdigest())):
                    hit = f"{column} sha256 on {where}"
                    break
            if hit is None and image is not None and (match := self._phash_match(image)) is not None:
                hit = f"image phash within {match[1]} bits of an entry of {match[0]}"
            hits.append(hit)
        decisions.reject([h is not None for h in hits], Reason.BLOCKLIST, [h or "" for h in hits])
        return decisions.outcomes()
