"""What a run's epoch order is built on: per shard, its sample count and a digest of its content.

Recorded in ``RUN_DIR/train/shards-{train,val,eval}.json`` when a run starts (and the training digests again in
every checkpoint's ``data_state.json``). The epoch order is positions within shards, so a run resumes by content:
shards whose digest differs from the recorded one are refused while the run has a checkpoint to resume from.
Shards are named by the URL the config gives (``DIR/shards/shard-000000.tar``) and read through their real path,
so a pipeline re-run that publishes identical shards in a new generation resumes; different ones are refused.

Digest and count, per shard, the cheapest that is sound:
  ``index``    the pipeline's ``<name>.parquet`` beside the tar: sha256 over the tar's size and ``(member, sha256,
               size)`` of every member in tar order; count = distinct keys. Used only when the index accounts for
               the tar's size: a tar rewritten or appended to after its index was written is not described by it.
  ``bytes``    sha256 of the tar's bytes, counted in the same pass: local shards without a usable index, and remote
               ones with neither an index nor a ``_stats.json`` (they had to be read to be counted anyway). A
               local digest is reused on the next start while the file's (device, inode, size, mtime, ctime) is
               unchanged: any write or rename moves ctime, and no tool sets it back.
  ``sampled``  remote shards with a ``_stats.json`` but no index, where reading every byte on each start is not
               cheap: sha256 over the size, the store's checksums (ETag, MD5, CRC32C where it gives them) and the
               first and last 64 KiB; count from the stats file if its ``bytes`` matches the tar. Weaker: a
               same-size rewrite that keeps both ends and has no checksum header goes unseen.

A shard read in full counts what it holds, extras past a stale index or ``_stats.json`` included, so those enter
the epoch order as ordinary positions at their place in the tar. When the index or stats claim more than the tar
holds (a truncated tar), the claim is the count: the lost samples are reported as ``shard_truncated`` every epoch
rather than vanishing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import fsspec

from mmcurate.pipeline.train.shards import _open, _sibling, iter_samples

log = logging.getLogger(__name__)

INDEX, BYTES, SAMPLED = "index", "bytes", "sampled"
INDEX_COLUMNS = ["key", "member", "offset", "size", "sha256"]
SAMPLE_BYTES = 64 << 10
_CHECKSUM_KEYS = {"etag", "content-md5", "digest", "md5hash", "crc32c", "checksumsha256", "checksumcrc32c"}


@dataclass(frozen=True)
class ShardEntry:
    url: str  # as the config names it: the shard's identity across starts
    path: str  # what is read: the real path of a local shard
    count: int
    digest: str | None  # None only in a manifest written before digests were recorded
    source: str  # index | bytes | sampled (see the module docstring)
    file_id: list[int] | None = None  # (device, inode, size, mtime_ns, ctime_ns) of a local ``bytes`` shard


class ShardsChanged(RuntimeError):
    """Shards this run recorded hold different content now."""


def changed_message(where: str, urls: Sequence[str]) -> str:
    listed = ", ".join(urls[:10]) + (f" and {len(urls) - 10} more" if len(urls) > 10 else "")
    return (
        f"refusing to resume: {len(urls)} shard(s) no longer hold the content recorded in {where}: {listed}. "
        f"Resuming would mix old and new samples into one epoch. Train into a new run directory (--run-dir), or "
        f"restore the shards this run was started on."
    )


def describe(url: str, path: str, previous: ShardEntry | None = None) -> ShardEntry:
    file_id, fs, fs_path = None, None, path
    if "://" not in path:
        st = os.stat(path)
        file_id = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        if previous is not None and previous.source == BYTES and previous.file_id == file_id and previous.digest:
            return replace(previous, url=url, path=path)
        info: dict[str, Any] = {"size": st.st_size}
    else:
        fs, fs_path = fsspec.core.url_to_fs(path)
        info = fs.info(fs_path)
    size = info.get("size")
    index = _read_index(path)
    claimed = None
    if index is not None:
        end = _index_end(index)
        if size is None or end <= size <= _tar_size_limit(end):
            return ShardEntry(url, path, len(set(index["key"])), _index_digest(index, size), INDEX)
        log.warning("the index of %s ends at byte %d, the tar has %s bytes: reading the tar itself", path, end, size)
        claimed = len(set(index["key"]))
    stats = _read_stats(path)
    if stats is not None and claimed is None:
        claimed = stats["samples"]
    if file_id is None and index is None and stats is not None and stats.get("bytes", size) == size:
        return ShardEntry(url, path, stats["samples"], _sampled_digest(fs, fs_path, info), SAMPLED)
    count, digest, error = _read_all(path)
    if error:
        log.warning("%s breaks after %d samples: %s", path, count, error)
    if claimed is not None and claimed != count:
        log.warning(
            "%s holds %d samples, its index or _stats.json says %d: %s", path, count, claimed,
            "all of them enter the epoch order" if count > claimed else "the missing ones are reported each epoch",
        )
    return ShardEntry(url, path, max(count, claimed or 0), digest, BYTES, file_id)


def describe_all(
    urls: Sequence[str], paths: Sequence[str], previous: Sequence[ShardEntry | None] | None = None, threads: int = 8
) -> list[ShardEntry]:
    """``describe`` every shard, concurrently (most are one small read; ``bytes`` ones are one pass each)."""
    previous = previous or [None] * len(urls)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as pool:
        entries = list(pool.map(describe, urls, paths, previous))
    sources: dict[str, int] = {}
    for e in entries:
        sources[e.source] = sources.get(e.source, 0) + 1
    log.info("%d samples in %d shards (digest source: %s)", sum(e.count for e in entries), len(entries), sources)
    return entries


def _read_index(path: str) -> dict[str, list] | None:
    index = _sibling(path, ".parquet")
    if not index:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _open(index) as f:
            return pq.read_table(f, columns=INDEX_COLUMNS).to_pydict()
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:  # not our index layout: use the tar
        log.warning("ignoring %s: %s", index, exc)
        return None


def _index_end(index: dict[str, list]) -> int:
    return max((o + -(-s // 512) * 512 for o, s in zip(index["offset"], index["size"])), default=0)


def _tar_size_limit(end: int) -> int:
    # after the last member: two zero blocks, then padding to tarfile's 10 KiB record
    return -(-(end + 1024) // 10240) * 10240


def _index_digest(index: dict[str, list], size: int | None) -> str:
    h = hashlib.sha256(f"mmcurate-index-v1 {size}\n".encode())
    for _, member, sha, n in sorted(zip(index["offset"], index["member"], index["sha256"], index["size"])):
        h.update(f"{member}\t{sha}\t{n}\n".encode())
    return h.hexdigest()


def _read_stats(path: str) -> dict[str, Any] | None:
    stats = _sibling(path, "_stats.json")
    if not stats:
        return None
    try:
        with _open(stats) as f:
            value = json.load(f)
        return {"samples": int(value["samples"]), **({"bytes": int(value["bytes"])} if "bytes" in value else {})}
    except (FileNotFoundError, KeyError, ValueError, TypeError, OSError):
        return None


def _sampled_digest(fs: Any, fs_path: str, info: dict[str, Any]) -> str:
    size = info.get("size")
    h = hashlib.sha256(f"mmcurate-sampled-v1 {size}\n".encode())
    for key in sorted(info):
        if key.lower() in _CHECKSUM_KEYS:
            h.update(f"{key.lower()}={info[key]}\n".encode())
    with fs.open(fs_path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size is not None and size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, stream: Any):
        self.stream, self.sha = stream, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        return data


def _read_all(path: str) -> tuple[int, str, str | None]:
    """(samples, sha256 of the bytes, error or None) in one pass."""
    count, error = 0, None
    with _open(path) as raw:
        stream = _Hashing(raw)
        try:
            for _ in iter_samples(stream, path):
                count += 1
        except Exception as exc:  # a broken tar is reported by the caller, and hashed like any other
            error = f"{type(exc).__name__}: {exc}"
        while stream.read(1 << 20):  # the end-of-archive padding is content too
            pass
    return count, stream.sha.hexdigest(), error


# ---- the manifest file ----------------------------------------------------------------------------------------


def load(path: Path) -> list[ShardEntry] | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if "shards" in saved:
        return [ShardEntry(**e) for e in saved["shards"]]
    # written before digests were recorded: names and counts only
    return [ShardEntry(u, u, c, None, "") for u, c in zip(saved["urls"], saved["counts"])]


def save(path: Path, entries: Sequence[ShardEntry]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"shards": [asdict(e) for e in entries]}, indent=1))
    os.replace(tmp, path)


def record(
    train_dir: Path, role: str, urls: Sequence[str], paths: Sequence[str], *, resuming: bool
) -> list[ShardEntry]:
    """Describe the shards, check them against what this run directory recorded, and record them.

    Raises ``ShardsChanged`` when ``resuming`` (the run has a checkpoint) and a recorded shard holds other
    content now. Without a checkpoint nothing would mix, so new content is recorded with a warning."""
    path = train_dir / f"shards-{role}.json"
    recorded = load(path)
    same_names = recorded is not None and [e.url for e in recorded] == list(urls)
    entries = describe_all(urls, paths, recorded if same_names else None)
    if same_names:
        changed = [new.url for old, new in zip(recorded, entries) if old.digest not in (None, new.digest)]
        if changed and resuming:
            raise ShardsChanged(changed_message(str(path), changed))
        if changed:
            log.warning("%d %s shard(s) hold new content; no checkpoint to resume: recorded anew", len(changed), role)
        if any(old.digest is None for old in recorded):
            log.warning("%s predates content digests: content changes before this start cannot be seen", path)
    elif recorded is not None:
        log.warning("%s shards differ from the ones this run directory was started with; recounting", role)
    save(path, entries)
    return entries
