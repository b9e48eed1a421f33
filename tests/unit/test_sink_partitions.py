"""The shard sink's key ranges without Ray: partitions are in key order, each written whole and once, and the
shards numbered across them hold every record once, in key order, whichever order the partitions finished in."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
from PIL import Image

from mmcurate.pipeline.sink import _gather, _with_partition, _write_group
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key
from mmcurate.schemas.stage_configs import ShardConfig
from mmcurate.stages.shard import PARTITION_COLUMN, ShardStage, partition_count, partition_of


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(buf, "JPEG")
    return buf.getvalue()


def table(n: int) -> pa.Table:
    rows = [empty_record(key=stable_key("t", i), image=jpeg(i), image_format="jpg", text=f"sample {i}") for i in range(n)]
    rows.append({**rows[7], "text": "another record with key 7's key", "url": "http://b/"})  # a duplicate key
    rows.append(empty_record(key=stable_key("t", "no text"), image=jpeg(1), image_format="jpg", text=" "))
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def test_partitions_are_key_ranges():
    keys = sorted(stable_key("k", i) for i in range(2000))
    parts = [partition_of(k, 7) for k in keys]
    assert parts == sorted(parts) and set(parts) == set(range(7))
    assert partition_count(0, 100) == 1 and partition_count(200, 100) == 1 and partition_count(201, 100) == 2


def write_all(tmp_path, records: pa.Table, config: ShardConfig, order):
    partitions = partition_count(records.num_rows, config.samples_per_shard)
    tagged = _with_partition(records, partitions, [])
    parts_dir = tmp_path / "partitions"
    parts_dir.mkdir(parents=True)
    for p in order(range(partitions)):
        group = tagged.filter(pa.compute.equal(tagged[PARTITION_COLUMN], p))
        if group.num_rows:
            _write_group(group, ShardStage, config, "shard", "h", str(parts_dir))
    work = tmp_path / "work"
    return _gather(ShardStage(config, "shard"), parts_dir, work), work


def test_shards_hold_every_record_once_in_key_order_whatever_order_partitions_finish(tmp_path):
    config = ShardConfig(samples_per_shard=10)
    records = table(95)
    stats, work = write_all(tmp_path / "a", records, config, order=list)
    assert stats["kept"] == 95 and stats["rejected"] == {"duplicate_key": 1, "no_text": 1}
    assert stats["in"] == records.num_rows
    keys = []
    for n in range(stats["shards"]):
        with tarfile.open(work / "shards" / f"shard-{n:06d}.tar") as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".txt")]
        assert json.loads((work / "shards" / f"shard-{n:06d}_stats.json").read_text())["name"] == f"shard-{n:06d}"
    assert keys == sorted(keys) and len(set(keys)) == 95
    _, other = write_all(tmp_path / "b", records, config, order=lambda r: list(reversed(r)))
    for path in sorted((work / "shards").iterdir()):
        assert path.read_bytes() == (other / "shards" / path.name).read_bytes()


def test_a_written_partition_is_not_written_again(tmp_path):
    config = ShardConfig(samples_per_shard=10)
    tagged = _with_partition(table(30), 2, [])
    group = tagged.filter(pa.compute.equal(tagged[PARTITION_COLUMN], 0))
    _write_group(group, ShardStage, config, "shard", "h", str(tmp_path))
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "000000").iterdir()}
    _write_group(group, ShardStage, config, "shard", "h", str(tmp_path))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "000000").iterdir()} == written
    assert _with_partition(tagged.drop_columns([PARTITION_COLUMN]), 2, [0])[PARTITION_COLUMN].to_pylist() == [1] * len(
        [k for k in tagged["key"].to_pylist() if partition_of(k, 2) == 1])
