"""Finding shards and reading them as streams: local globs, brace patterns and fsspec URLs, never copied first.

Per-shard sample counts and content digests: ``mmcurate.pipeline.train.manifest``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from typing import Any

import braceexpand
import fsspec
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mmcurate.pipeline.storage import resolve_url

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
    # a remote run directory's DIR/shards is a pointer object (pipeline.storage): glob the generation it names now,
    # and name the matches by the pattern's own prefix, as a local DIR/shards symlink would
    first = min(i for i, c in enumerate(pattern) if c in _GLOB_CHARS)
    prefix = pattern[: pattern.rfind("/", 0, first)]
    resolved = resolve_url(prefix)
    found = sorted(fs.unstrip_protocol(p) for p in fs.glob(fs._strip_protocol(resolved + pattern[len(prefix) :])))
    return [prefix + url[len(resolved) :] if url.startswith(resolved) else url for url in found]


def _sibling(url: str, suffix: str) -> str:
    if not url.endswith(".tar"):
        return ""
    return url[: -len(".tar")] + suffix


def _open(url: str, mode: str = "rb") -> Any:
    return fsspec.open(url, mode).open()


def resolve_local(url: str) -> str:
    """The real path of a local shard (``file://`` included); a remote URL with the pipeline's pointer objects
    followed (``s3://bucket/run/shards/x.tar`` -> the generation's ``.../shards/x.tar``), other URLs unchanged.
    Shards are read through their real location so that a later swap of a link in between (the pipeline's
    ``DIR/shards`` pointing at a new generation) cannot mix two generations into one run."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        return resolve_url(url)
    return os.path.realpath(url)


def count_all(urls: Sequence[str], threads: int = 8) -> list[int]:
    """Sample counts of every shard (see ``manifest.describe``)."""
    from mmcurate.pipeline.train.manifest import describe_all  # manifest builds on this module

    return [entry.count for entry in describe_all(urls, [resolve_local(u) for u in urls], threads=threads)]


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in file order: dicts of ``__key__`` and member extension -> bytes.

    A tar that breaks mid-way raises from here; the caller decides what the missing samples count as."""
    with _open(url) as stream:
        yield from iter_samples(stream, url)


def iter_samples(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """Samples of an open tar stream (``url`` names it in errors)."""
    files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
    for sample in group_by_keys(files):
        sample.pop("__url__", None)
        yield sample


class StreamReader:
    """Reads stream-order positions forwards across the epoch's shard order, opening each shard once per run of
    consecutive reads. A shard that ends early or fails yields ``None`` for its missing positions.

    Having read a shard's last counted sample, the reader reads the shard to its end: keys found there (the shard
    holds more samples than its recorded count) go to ``extras[shard]`` for the caller to report."""

    def __init__(self, urls: Sequence[str], order: Any):
        self.urls, self.order = urls, order
        self._shard: int | None = None
        self._it: Iterator[dict[str, Any]] | None = None
        self._next_ordinal = 0
        self.errors: list[str] = []
        self.extras: dict[int, list[str]] = {}

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
        if self._it is not None and self._next_ordinal == self.order.counts[self._shard]:
            self._read_extras()
        return sample

    def _read_extras(self) -> None:
        keys = []
        try:
            keys = [str(extra.get("__key__")) for extra in self._it]
        except Exception as exc:  # the extras are reported, not trained: a broken tail loses nothing counted
            self.errors.append(f"{self.urls[self._shard]}: past its counted samples: {type(exc).__name__}: {exc}")
        self._it = None
        if keys:
            self.extras[self._shard] = keys

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None
