"""Shard writing against a plain sequential write of the same member bytes.

    .venv/bin/python tests/bench/bench_shards.py [--from-run RUN_DIR] [--n 5000] [--repeats 3] [--quick]

With ``--from-run`` every kept record of the run is used (``--quick`` then only cuts the repeats to one) and
shards are cut at the run's samples_per_shard.

Input: the align output of a run (``RUN_DIR/align/data/*.parquet``, e.g. bench_ingest.py's ``--work-dir``), or
else N records synthesised from the benchmark image set (each 480×360 image resized to 256×192, JPEG quality 90,
as align would write it, with a short caption). The records are loaded into memory before any timing.

* ``shard_s``: ``mmcurate.stages.shard.write_shards(records, out, samples_per_shard=S)`` over the records as
  dicts, sorted by key: members built, tar written, sha256 of every member, parquet index, stats, fsync, rename.
* ``sink_s``: what the shard sink runs in each Ray worker, ``ShardStage.write_partition(table, ...)``, called here
  in one process for each key-range partition in turn (``partition_count`` / ``partition_of``) on the Arrow
  table: the sort, the duplicate/caption/media checks and ``write_shards``. Skipped if the sink has no
  ``write_partition``.
* ``plain_s``: the same member bytes (built beforehand, untimed) written with ``tarfile`` in the same groups of S
  samples, one tar each, then fsynced as the shard writer fsyncs: no index, no hashing, no rename.
  ``plain_nofsync_s`` is the same without the fsync.

Each is the median of ``--repeats`` runs, alternated (plain, shard, sink, plain, ...) so drift hits all alike.
Ratios (1.0 = as fast as the plain write): ``plain_s / shard_s``, ``plain_s / sink_s``; with ``--from-run`` also
``plain_s / run_shard_stage_s``, against that run's whole shard stage from its stats.json (Ray reading, the
shuffle into key ranges, scheduling and the commit included; timed under that run's load, not this one's).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def synthesised_table(n: int, cache: Path) -> Any:
    """N align-like records (256×192 JPEGs + captions), cached as parquet beside the image set."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key

    path = cache / f"shard-records-n{n}.parquet"
    if path.exists():
        return pq.read_table(path)
    harness.log(f"synthesising {n} aligned records into {path}")
    rows = []
    for i, image_path in enumerate(harness.image_set(n, cache)):
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            image.thumbnail((256, 256), Image.BOX)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
        url = f"http://127.0.0.1:8000/{i:06d}.jpg"
        rows.append(empty_record(key=stable_key("url_list", 0, i, url), source="url_list", url=url, image_url=url,
                                 position=i, caption=harness.caption_of(i), text=harness.caption_of(i),
                                 text_source="caption", image=buf.getvalue(), image_format="jpg",
                                 image_width=image.width, image_height=image.height))
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    pq.write_table(table, path)
    return table


def run_samples_per_shard(run_dir: Path) -> int:
    """The shard stage's samples_per_shard in the workflow that made ``run_dir`` (its manifest names the file)."""
    import json

    import yaml

    from mmcurate.schemas.stage_configs import ShardConfig

    workflow = json.loads((run_dir / "manifest.json").read_text())["workflow"]["path"]
    stages = yaml.safe_load(Path(workflow).read_text())["stages"]
    spec = next((s for s in stages if s.get("stage") == "shard"), {})
    return int(spec.get("samples_per_shard", ShardConfig().samples_per_shard))


def run_table(run_dir: Path) -> Any:
    import pyarrow.dataset as pads

    data = Path(os.path.realpath(run_dir / "align" / "data"))
    return pads.dataset(sorted(str(p) for p in data.glob("*.parquet")), format="parquet").to_table()


def sink_callable(table: Any, config: Any, shard_size: int) -> tuple[Any, str, int | str]:
    """(writer(out), what it runs, partitions): each key-range partition in turn through what a sink worker runs,
    ``pipeline.sink._write_group`` (write_partition + partition.json + fsync + rename) where it exists, else
    ``ShardStage.write_partition``; (None, why, "n/a") if neither does."""
    import pyarrow.compute as pc

    from mmcurate.stages import shard

    if not hasattr(shard, "partition_count") or not hasattr(shard.ShardStage, "write_partition"):
        return None, "none (stages.shard has no partition_count / ShardStage.write_partition)", "n/a"
    count = shard.partition_count(table.num_rows, shard_size)
    try:
        from mmcurate.pipeline import sink
    except ImportError:
        sink = None
    if sink is not None and hasattr(sink, "_write_group") and hasattr(sink, "_with_partition"):
        tagged = sink._with_partition(table, count, [])
        groups = [g for p in range(count)
                  if (g := tagged.filter(pc.equal(tagged[shard.PARTITION_COLUMN], p))).num_rows]

        def write(out: Path) -> None:
            out.mkdir(parents=True, exist_ok=True)
            for group in groups:
                sink._write_group(group, config, "shard", "bench", str(out))

        return write, "pipeline.sink._write_group per partition", len(groups)
    parts = pa_array([shard.partition_of(k, count) for k in table.column("key").to_pylist()])
    groups = [g for p in range(count) if (g := table.filter(pc.equal(parts, p))).num_rows]
    stage = shard.ShardStage(config)

    def write(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for number, group in enumerate(groups):
            stage.write_partition(group, out, f"part{number:05d}")

    return write, "ShardStage.write_partition per partition", len(groups)


def pa_array(values: list[int]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.int64())


def plain_write(groups: list[list[tuple[str, bytes]]], out: Path, fsync: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for number, members in enumerate(groups):
        with open(out / f"plain-{number:06d}.tar", "wb") as stream:
            with tarfile.open(fileobj=stream, mode="w") as tar:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())


def timed(fn: Any, out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    fn(out)
    seconds = time.perf_counter() - t0
    return seconds


def tar_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.tar"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", help="a run directory whose align output to shard")
    parser.add_argument("--n", type=int, default=5000, help="synthesised records (without --from-run)")
    parser.add_argument("--shard-size", type=int,
                        help="samples per shard (default: the run's samples_per_shard with --from-run, else 1000)")
    parser.add_argument("--repeats", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="500 synthesised records in shards of 100, one repeat")
    parser.add_argument("--work-dir", help="default: a temp dir, removed at the end")
    parser.add_argument("--cache-dir", default=str(harness.DEFAULT_CACHE))
    args = parser.parse_args()
    if args.quick:
        args.n = min(args.n, 500)
    if args.shard_size is None:
        args.shard_size = run_samples_per_shard(Path(args.from_run)) if args.from_run else 100 if args.quick else 1000
    args.repeats = args.repeats or (1 if args.quick else 3)

    from mmcurate.schemas.stage_configs import ShardConfig
    from mmcurate.stages import shard

    work = harness.work_dir(args.work_dir, "shards")
    table = run_table(Path(args.from_run)) if args.from_run else synthesised_table(args.n, Path(args.cache_dir))
    table = table.sort_by("key")
    records = table.to_pylist()
    source = f"align output of {args.from_run}" if args.from_run else "synthesised"

    # the plain writer gets exactly the members write_shards writes, in the same groups
    groups = []
    for start in range(0, len(records), args.shard_size):  # write_shards' grouping (its byte cap is 1 GiB)
        group = records[start:start + args.shard_size]
        groups.append([(f"{r['key']}.{ext}", data) for r in group for ext, data in shard.sample_members(r).items()])
    member_bytes = sum(len(data) for g in groups for _, data in g)

    config = ShardConfig(samples_per_shard=args.shard_size)
    sink_writer, sink_what, partitions = sink_callable(table, config, args.shard_size)

    def shard_writer(out: Path) -> None:
        shard.write_shards(records, out, samples_per_shard=args.shard_size)

    times: dict[str, list[float]] = {"plain": [], "plain_nofsync": [], "shard": [], "sink": []}
    sizes: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in (("plain", lambda o: plain_write(groups, o, fsync=True)),
                         ("plain_nofsync", lambda o: plain_write(groups, o, fsync=False)),
                         ("shard", shard_writer), ("sink", sink_writer)):
            if fn is None:
                continue
            out = work / name
            times[name].append(timed(fn, out))
            sizes[name] = tar_bytes(out)
            shutil.rmtree(out)

    med = {name: statistics.median(v) for name, v in times.items() if v}
    figures: dict[str, Any] = {
        "plain_s / shard_s": med["plain"] / med["shard"],
        "plain_s / sink_s": med["plain"] / med["sink"] if "sink" in med else "n/a (no sink writer found)",
        "plain_nofsync_s / shard_s": med["plain_nofsync"] / med["shard"],
        "records": len(records),
        "records_from": source,
        "samples_per_shard": args.shard_size,
        "shards": len(groups),
        "sink_writer": sink_what,
        "sink_partitions": partitions,
        "member_mib": harness.mib(member_bytes),
        "plain_s": med["plain"],
        "plain_nofsync_s": med["plain_nofsync"],
        "shard_s": med["shard"],
    }
    if "sink" in med:
        figures["sink_s"] = med["sink"]
    figures["shard_mib_per_s"] = harness.mib(member_bytes) / med["shard"]
    figures["plain_mib_per_s"] = harness.mib(member_bytes) / med["plain"]
    for name in med:
        figures[f"{name}_tar_mib"] = harness.mib(sizes[name])
    if args.from_run:  # the whole shard stage of that run (Ray read, shuffle by key range, workers, commit)
        import json

        stats_path = Path(args.from_run) / "stats.json"
        run_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        run_stage_s = run_stats.get("shard", {}).get("seconds")
        if run_stage_s and args.shard_size == run_samples_per_shard(Path(args.from_run)):
            figures["plain_s / run_shard_stage_s"] = med["plain"] / run_stage_s
            figures["run_shard_stage_s"] = run_stage_s
    figures["repeats"] = args.repeats
    for name, values in times.items():
        if len(values) > 1:
            figures[f"{name}_s_all"] = " ".join(f"{v:.3f}" for v in values)
    figures["loadavg_after"] = harness.loadavg()
    figures["code"] = harness.code_version()
    harness.print_figures(figures)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
