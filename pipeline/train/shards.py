"""Finding shards and reading them as streams: local globs, brace patterns and fsspec URLs, never copied first.

Per-shard sample counts come, cheapest first, from the shard writer's ``<name>_stats.json``, its parquet index
(one row per member; distinct keys), or a pass over the tar headers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import braceexpand
import fsspec
from webdataset.tariterators import group_by_keys, tar_file_iterator

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Brace-expand and glob every pattern; return the sorted, de-duplicated shard URLs (local paths stay paths).

    Raises FileNotFoundError when a pattern matches nothing, so a typo never trains on an empty set."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand.braceexpand(pattern):
            matches = _glob_one(expanded)
            if not matches:
                raise FileNotFoundError(f"shard pattern {expanded!r} (from {pattern!r}) matches no file")
            urls.extend(matches)
    return sorted(dict.fromkeys(urls))


def _glob_one(pattern: str) -> list[str]:
    if "://" not in pattern:
        # absolute: Ray Train workers run in their own working directory, not the driver's
        pattern = os.path.abspath(os.path.expanduser(pattern))
        if _GLOB_CHARS & set(pattern):
            return sorted(glob.glob(pattern))
        return [pattern] if os.path.exists(pattern) else []
    fs, path = fsspec.core.url_to_fs(pattern)
    if not (_GLOB_CHARS & set(path)):
        # HTTP servers cannot list directories; a literal URL is taken on trust and fails when opened
        return [pattern]
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


def _sibling(url: str, suffix: str) -> str:
    if not url.endswith(".tar"):
        return ""
    return url[: -len(".tar")] + suffix


def _open(url: str, mode: str = "rb") -> Any:
    return fsspec.open(url, mode).open()


def count_samples(url: str) -> tuple[int, str]:
    """(sample count, where the count came from) for one shard."""
    stats = _sibling(url, "_stats.json")
    if stats:
        try:
            with _open(stats) as f:
                return int(json.load(f)["samples"]), "stats"
        except (FileNotFoundError, KeyError, ValueError, OSError):
            pass
    index = _sibling(url, ".parquet")
    if index:
        try:
            import pyarrow.parquet as pq

            with _open(index) as f:
                keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
            return len(set(keys)), "parquet"
        except (FileNotFoundError, KeyError, ValueError, OSError):
            pass
    return sum(1 for _ in iter_shard(url)), "scan"


def count_all(urls: Sequence[str], threads: int = 8) -> list[int]:
    """Sample counts of every shard, read concurrently (each is one small object or one header pass)."""
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as pool:
        results = list(pool.map(count_samples, urls))
    sources: dict[str, int] = {}
    for _, source in results:
        sources[source] = sources.get(source, 0) + 1
    log.info("counted %d samples in %d shards (count source: %s)", sum(c for c, _ in results), len(urls), sources)
    return [c for c, _ in results]


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in file order: dicts of ``__key__`` and member extension -> bytes.

    A tar that breaks mid-way raises from here; the caller decides what the missing samples count as."""
    with _open(url) as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            sample.pop("__url__", None)
            yield sample


class StreamReader:
    """Reads stream-order positions forwards across the epoch's shard order, opening each shard once per run of
    consecutive reads. A shard that ends early or fails yields ``None`` for its missing positions."""

    def __init__(self, urls: Sequence[str], order: Any):
        self.urls, self.order = urls, order
        self._shard: int | None = None
        self._it: Iterator[dict[str, Any]] | None = None
        self._next_ordinal = 0
        self.errors: list[str] = []

    def read(self, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        for o in range(start, stop):
            shard, ordinal = self.order.locate(o)
            if shard != self._shard or ordinal < self._next_ordinal:
                self._open(shard)
            yield o, self._advance_to(ordinal)

    def _open(self, shard: int) -> None:
        self.close()
        self._shard, self._next_ordinal = shard, 0
        self._it = iter_shard(self.urls[shard])

    def _advance_to(self, ordinal: int) -> dict[str, Any] | None:
        sample = None
        while self._next_ordinal <= ordinal:
            sample = None
            if self._it is not None:
                try:
                    sample = next(self._it)
                except StopIteration:
                    self.errors.append(f"{self.urls[self._shard]}: ended before sample {self._next_ordinal}")
                    self._it = None
                except Exception as exc:  # a broken tar loses the rest of the shard, not the run
                    self.errors.append(f"{self.urls[self._shard]}: {type(exc).__name__}: {exc}")
                    self._it = None
            self._next_ordinal += 1
        return sample

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None
