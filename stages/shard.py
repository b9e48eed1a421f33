"""The WebDataset sink: sorted records → deterministic tar shards, each with a parquet index and a stats file.

Layout of one shard, ``<prefix>-000042``:
  ``<prefix>-000042.tar``         members ``<key>.jpg|png``, ``<key>.flac``, ``<key>.txt``, ``<key>.json``
  ``<prefix>-000042.parquet``     one row per sample: key, url, caption, member names with byte offset/size, sha256
  ``<prefix>-000042_stats.json``  sample count, bytes, modality counts

Shards are written to a temporary name and renamed, and the tar headers carry a fixed mtime/owner, so the same
records always give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmcurate.schemas.record import SCORES_TYPE, scores_of
from mmcurate.schemas.stage_configs import ShardConfig
from mmcurate.stages.base import SinkStage
from mmcurate.stages.files import atomic_write_bytes, atomic_write_parquet

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("url", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("text_source", pa.string()),
        pa.field("member", pa.string()),
        pa.field("offset", pa.int64()),  # byte offset of the member's data within the tar
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("scores", SCORES_TYPE),  # the sample's scores, so a threshold is one SQL query over the index
    ]
)

# Extension columns the writer reads (``sample_members``): the sink keeps them beside the record columns.
WRITTEN_EXTENSIONS = ("pii",)

# Metadata carried in each sample's .json member (the media and caption travel as their own members).
JSON_FIELDS = (
    "key",
    "parent",
    "source",
    "url",
    "page_url",
    "image_url",
    "audio_url",
    "text_source",
    "image_width",
    "image_height",
    "audio_rate",
    "audio_seconds",
    "clip_start",
    "clip_end",
    "scores",
)


@dataclass(frozen=True)
class ShardInfo:
    name: str
    path: str
    samples: int
    bytes: int
    images: int
    audio: int


def sample_members(record: dict[str, Any]) -> dict[str, bytes]:
    """The tar members of one record, keyed by extension, in a fixed order."""
    members: dict[str, bytes] = {}
    if record.get("image") is not None:
        members[record["image_format"]] = bytes(record["image"])
    if record.get("audio") is not None:
        members["flac"] = bytes(record["audio"])
    members["txt"] = (record.get("text") or "").encode("utf-8")
    meta = {name: record.get(name) for name in JSON_FIELDS}
    meta["scores"] = scores_of(record)
    if record.get("pii") is not None:  # the pii stage's entity counts (never the values)
        meta["pii"] = dict(record["pii"])
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members


def _tar_member_offsets(tar_path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(tar_path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def _write_one(records: list[dict[str, Any]], out_dir: Path, name: str) -> ShardInfo:
    tar_path = out_dir / f"{name}.tar"
    tmp = out_dir / f".{name}.tar.tmp"
    index_rows: list[dict[str, Any]] = []
    images = audio = 0
    keys: set[str] = set()
    for record in records:  # two members with one name: readers raise or silently pick one
        if record["key"] in keys:
            raise ValueError(f"shard {name}: a second sample with key {record['key']}")
        keys.add(record["key"])
    import webdataset as wds  # imports torch: only where shards are written

    with open(tmp, "wb") as stream:
        # fixed mtime/user/group: identical input gives identical bytes
        writer = wds.TarWriter(stream, mtime=0, user="mmcurate", group="mmcurate", mode=0o444)
        for record in records:
            members = sample_members(record)
            images += "jpg" in members or "png" in members
            audio += "flac" in members
            writer.write({"__key__": record["key"], **members})
            for ext, data in members.items():
                index_rows.append(
                    {
                        "key": record["key"],
                        "url": record.get("url"),
                        "page_url": record.get("page_url"),
                        "caption": record.get("text"),
                        "text_source": record.get("text_source"),
                        "member": f"{record['key']}.{ext}",
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "scores": sorted(scores_of(record).items()),
                    }
                )
        writer.close()
        stream.flush()
        os.fsync(stream.fileno())
    offsets = _tar_member_offsets(tmp)
    for row in index_rows:
        row["offset"], row["size"] = offsets[row["member"]]
    size = tmp.stat().st_size
    atomic_write_parquet(pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA), out_dir / f"{name}.parquet")
    info = ShardInfo(name=name, path=str(tar_path), samples=len(records), bytes=size, images=images, audio=audio)
    stats = {k: v for k, v in asdict(info).items() if k != "path"}
    atomic_write_bytes(out_dir / f"{name}_stats.json", json.dumps(stats, indent=2, sort_keys=True).encode())
    os.replace(tmp, tar_path)
    return info


def _record_bytes(record: dict[str, Any]) -> int:
    # tar framing: 512-byte header per member plus data padded to 512 bytes
    return sum(512 + -(-len(data) // 512) * 512 for data in sample_members(record).values())


def _tar_file_bytes(member_bytes: int) -> int:
    # two zero blocks end the archive, and tarfile pads the file to a multiple of its 10 KiB record size
    return -(-(member_bytes + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _group_into_shards(
    records: Iterable[dict[str, Any]], samples_per_shard: int, max_shard_bytes: int
) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    group_bytes = 0
    for record in records:
        size = _record_bytes(record)
        if group and (len(group) >= samples_per_shard or _tar_file_bytes(group_bytes + size) > max_shard_bytes):
            yield group
            group, group_bytes = [], 0
        group.append(record)
        group_bytes += size
    if group:
        yield group


def write_shards(
    samples: Iterable[dict[str, Any]],
    out_dir: str | Path,
    *,
    prefix: str = "shard",
    samples_per_shard: int = 1000,
    max_shard_bytes: int = 1 << 30,
) -> list[ShardInfo]:
    """Write records (already in their final order) as WebDataset shards. A shard closes when it holds
    ``samples_per_shard`` samples or the next sample would push it past ``max_shard_bytes``; a single sample larger
    than the byte limit still gets a shard of its own rather than being dropped."""
    if samples_per_shard < 1 or max_shard_bytes < 1:
        raise ValueError("samples_per_shard and max_shard_bytes must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    for number, group in enumerate(_group_into_shards(samples, samples_per_shard, max_shard_bytes)):
        infos.append(_write_one(group, out, f"{prefix}-{number:06d}"))
    return infos


def _tiebreak(record: dict[str, Any]) -> tuple[str, ...]:
    """Orders records that share a key by their content, so which one wins does not depend on scheduling."""
    digest = hashlib.sha256()
    for column in ("image", "audio"):
        digest.update(bytes(record.get(column) or b"") + b"\0")
    return (record.get("url") or "", record.get("page_url") or "", record.get("text") or "", digest.hexdigest())


def first_of_each_key(records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """From records sorted by key: (the record that wins its key, the others with that key)."""
    group: list[dict[str, Any]] = []
    for record in records:
        if group and record["key"] != group[0]["key"]:
            group.sort(key=_tiebreak)
            yield group[0], group[1:]
            group = []
        group.append(record)
    if group:
        group.sort(key=_tiebreak)
        yield group[0], group[1:]


# Partitions hold about this many shards' worth of samples: few enough partial shards, small enough groups (one
# partition is sorted in one worker's memory).
SHARDS_PER_PARTITION = 2
PARTITION_COLUMN = "_partition"


def partition_count(rows: int, samples_per_shard: int) -> int:
    """How many key ranges a sink of ``rows`` records is cut into: a function of the data and the config only, so
    the shards are the same whatever the number of workers."""
    return max(1, -(-rows // (samples_per_shard * SHARDS_PER_PARTITION)))


def partition_of(key: str, partitions: int) -> int:
    """The key range ``key`` falls in. Keys are hex digests (``stable_key``), so the first 32 bits order them
    and spread them evenly; partition p holds keys below those of partition p + 1."""
    try:
        prefix = int(key[:8].ljust(8, "0"), 16)
    except ValueError:  # not a hex key: still a fixed partition, though outside the key order
        prefix = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return prefix * partitions >> 32


class ShardStage(SinkStage[ShardConfig]):
    """The ``shard`` sink: kept records → WebDataset shards, written by Ray workers.

    Records are range-partitioned by key (``partition_of``); each partition is sorted by key in one worker and
    written as shards of its own (``write_partition``), so shard contents depend only on the records and the
    config, never on scheduling or the number of workers, and a killed run resumes without rewriting a finished
    partition. The driver numbers the shards in key order at commit. Keys are unique by construction upstream;
    should two records still share one, the first by content order is written and the others are rejected as
    ``duplicate_key``."""

    def partitions(self, rows: int) -> int:
        return partition_count(rows, self.config.samples_per_shard)

    def write_partition(self, records: pa.Table, out_dir: Path, prefix: str) -> tuple[list[ShardInfo], list[dict[str, Any]]]:
        """Write one partition's records as shards ``<prefix>-NNNNNN`` in key order; return the shards and the
        outcome rows of records that cannot become a sample (a second record of a key, no caption, no media)."""
        from mmcurate.schemas.reasons import Reason
        from mmcurate.stages.base import internal_error, rejected

        refused: list[dict[str, Any]] = []
        ordered = records.sort_by("key") if records.num_rows else records

        def sorted_records() -> Iterator[dict[str, Any]]:
            for batch in ordered.to_batches(max_chunksize=256):
                yield from batch.to_pylist()

        def writable() -> Iterator[dict[str, Any]]:
            for record, duplicates in first_of_each_key(sorted_records()):
                for other in duplicates:
                    refused.append(rejected(other, Reason.DUPLICATE_KEY, f"key already written for {record.get('url')}"))
                if not (record.get("text") or "").strip():
                    refused.append(rejected(record, Reason.NO_TEXT, "record reached the shard writer without a caption"))
                elif record.get("image") is None and record.get("audio") is None:
                    refused.append(rejected(record, Reason.NO_MEDIA, "record has neither image nor audio"))
                else:
                    try:
                        sample_members(record)
                    except Exception as err:  # one unwritable record is one row, not a failed stage
                        refused.append(internal_error(record, err))
                        continue
                    yield record

        infos = write_shards(
            writable(),
            out_dir,
            prefix=prefix,
            samples_per_shard=self.config.samples_per_shard,
            max_shard_bytes=self.config.max_shard_bytes,
        )
        return infos, refused
