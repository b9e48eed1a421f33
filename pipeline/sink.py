"""The shard sink on Ray workers: key ranges written whole by one worker each, numbered in key order at commit.

    DIR/.progress/<sink>-<fingerprint>/partitions/<p>/   part-NNNNNN.tar|.parquet|_stats.json, rejects.parquet,
                                                         partition.json (its shards and counts)

A partition's directory is written under a temporary name and renamed whole by the worker, so a killed run
resumes by writing only the partitions that have no directory yet. The driver reads the small
``partition.json`` files, links the shards into the generation as ``<prefix>-NNNNNN`` (numbered across
partitions in key order) and writes their ``_stats.json``; no record passes through it. On a remote run directory
(``pipeline.storage``) a partition is uploaded from the worker's local temporary directory, ``_DONE`` last, and
linked by server-side copy.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.pipeline.rundir import kill_point
from mmcurate.pipeline.storage import is_url, join, storage_for
from mmcurate.schemas.record import RECORD_SCHEMA, outcome_table
from mmcurate.stages.base import reject_rows
from mmcurate.stages.base import SinkStage
from mmcurate.stages.shard import PARTITION_COLUMN, WRITTEN_EXTENSIONS, partition_of

PARTITION_FILE = "partition.json"
_SHUFFLE_PARTITIONS = 64  # at most this many shuffle reducers; each takes whole key ranges


def _with_partition(batch: pa.Table, partitions: int, skip: list[int]) -> pa.Table:
    parts = [partition_of(key, partitions) for key in batch["key"].to_pylist()]
    columns = [*RECORD_SCHEMA.names, *(name for name in WRITTEN_EXTENSIONS if name in batch.column_names)]
    table = batch.select(columns).append_column(PARTITION_COLUMN, pa.array(parts, pa.int32()))
    if not skip:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.invert(pc.is_in(table[PARTITION_COLUMN], value_set=pa.array(skip, pa.int32()))))


def _write_group(group: pa.Table, cls: type[SinkStage], config: Any, name: str, config_hash: str,
                 partitions_dir: str) -> pa.Table:
    """One partition, in one worker: sorted, written as shards, published by one rename."""
    partition = group[PARTITION_COLUMN][0].as_py()
    final = join(partitions_dir, f"{partition:06d}")
    store = storage_for(final)
    if not store.published(final):
        tmp = store.staging(final)  # local: .<p>.tmp-<id> beside it; remote: a local temp dir
        infos, refused = cls(config, name).write_partition(group.drop_columns([PARTITION_COLUMN]), tmp, "part")
        if refused:
            pq.write_table(reject_rows(outcome_table(refused), name, config_hash), tmp / "rejects.parquet")
        summary = {
            "shards": [{"file": i.name, "samples": i.samples, "bytes": i.bytes, "images": i.images, "audio": i.audio}
                       for i in infos],
            "rejected": dict(sorted(Counter(r["_reason"] for r in refused).items())),
        }
        (tmp / PARTITION_FILE).write_text(json.dumps(summary, sort_keys=True))
        store.publish(tmp, final)  # local: fsync + one rename; remote: the files, then _DONE
    return pa.table({"partition": [partition]})


def _write_whole(paths: list[str], filesystem: Any, **task_args: Any) -> bool:
    """The only key range, in one worker: every input file read, then written as ``_write_group`` writes one."""
    tables = [pq.read_table(path, filesystem=filesystem) for path in paths]
    table = _with_partition(pa.concat_tables(tables, promote_options="default"), 1, [])
    if not table.num_rows:
        return False
    _write_group(table, **task_args)
    return True


def run_sink(stage: SinkStage, config_hash: str, files: list[str], rows: int, work: Path | str,
             progress: Path | str, log: Any) -> dict[str, Any]:
    import ray

    cfg = stage.config
    partitions = stage.partitions(rows)
    parts_dir = join(progress, "partitions")
    if not is_url(parts_dir):
        Path(parts_dir).mkdir(parents=True, exist_ok=True)
    done = sorted(int(name) for name in storage_for(parts_dir).published_children(parts_dir))
    log.info("stage %s: %d records in %d key ranges, %d written by an earlier run", stage.name, rows, partitions,
             len(done))
    if files and len(done) < partitions:
        from ray.data.context import DataContext, ShuffleStrategy

        # the sort-based shuffle runs as plain tasks; the hash shuffle starts aggregator actors (seconds each here)
        DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        paths, filesystem = storage_for(files[0]).arrow(files)
        task_args = {"cls": type(stage), "config": cfg, "name": stage.name, "config_hash": config_hash,
                     "partitions_dir": parts_dir}
        if partitions == 1:
            # one key range: the shuffle's sample, map and reduce tasks (seconds here) would hand every record to
            # one worker anyway; one task reads the input and writes it
            wrote = ray.get(ray.remote(_write_whole).options(num_cpus=cfg.num_cpus).remote(paths, filesystem,
                                                                                          **task_args))
            if wrote:
                log.info("stage %s: key ranges [0] written", stage.name)
                kill_point(f"sink:{stage.name}:partition")
            return _gather(stage, parts_dir, work)
        written = (
            ray.data.read_parquet(paths, filesystem=filesystem)
            .map_batches(_with_partition, fn_kwargs={"partitions": partitions, "skip": done}, batch_format="pyarrow")
            .groupby(PARTITION_COLUMN, num_partitions=min(partitions, _SHUFFLE_PARTITIONS))
            .map_groups(_write_group, batch_format="pyarrow", concurrency=cfg.concurrency, num_cpus=cfg.num_cpus,
                        fn_kwargs=task_args)
        )
        for batch in written.iter_batches(batch_format="pyarrow", batch_size=None):
            log.info("stage %s: key ranges %s written", stage.name, batch["partition"].to_pylist())
            kill_point(f"sink:{stage.name}:partition")
    return _gather(stage, parts_dir, work)


def _gather(stage: SinkStage, parts_dir: Path | str, work: Path | str) -> dict[str, Any]:
    """Link every partition's shards into ``work/shards`` as ``<prefix>-NNNNNN`` in key order, its reject rows into
    ``work/rejects``; return the stage's counts. ``work`` is the generation being written (remote: its prefix)."""
    parts_dir, work = str(parts_dir), str(work)
    source, target = storage_for(parts_dir), storage_for(work)
    shards_dir, rejects_dir = join(work, "shards"), join(work, "rejects")
    if not is_url(work):
        Path(shards_dir).mkdir(parents=True, exist_ok=True)
        Path(rejects_dir).mkdir(parents=True, exist_ok=True)
    number = written = shard_bytes = 0
    rejected: Counter[str] = Counter()
    parts = sorted(source.published_children(parts_dir), key=int)
    present = set(source.files(parts_dir))
    summaries = source.read_many([join(parts_dir, part, PARTITION_FILE) for part in parts])
    links = []
    for part, body in zip(parts, summaries):
        summary = json.loads(body)
        for shard in summary["shards"]:
            name = f"{stage.config.prefix}-{number:06d}"
            for suffix in (".tar", ".parquet"):
                links.append((join(parts_dir, part, f"{shard['file']}{suffix}"), join(shards_dir, f"{name}{suffix}")))
            stats = {"name": name, **{k: shard[k] for k in ("samples", "bytes", "images", "audio")}}
            target.write_bytes(join(shards_dir, f"{name}_stats.json"), json.dumps(stats, indent=2, sort_keys=True).encode())
            number += 1
            written += shard["samples"]
            shard_bytes += shard["bytes"]
        if f"{part}/rejects.parquet" in present:
            links.append((join(parts_dir, part, "rejects.parquet"), join(rejects_dir, f"part-{part}.parquet")))
        rejected.update(summary["rejected"])
    target.link_many(links)  # hard links; remote: server-side copies
    refused = sum(rejected.values())
    return {
        "in": written + refused,
        "out": written + refused,
        "kept": written,
        "rejected": dict(sorted(rejected.items())),
        "shards": number,
        "shard_bytes": shard_bytes,
    }
