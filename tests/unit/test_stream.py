"""The streamed segment's worker without Ray: per block and stage, outputs written once, finished blocks never
redone, a block an earlier stage finished resumed from what that stage kept, and the counts add up."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcurate.pipeline.stream import (COUNTS, SegmentWorker, StageRun, block_counts, block_dir, link_blocks,
                                      pending_blocks)
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import AlignConfig
from mmcurate.stages.align import AlignStage
from mmcurate.stages.base import Block


def jpeg(colour: str, size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


class CountingAlign(AlignStage):
    """The real align stage, counting the records it was asked to process (per process: the test's)."""

    seen: list[str] = []

    def process(self, record):
        CountingAlign.seen.append(record["key"])
        return super().process(record)


def records_file(tmp_path, n: int):
    rows = [empty_record(key=f"k{i:03d}", image=jpeg("red" if i % 2 else "blue"), alt=f"a plain picture {i}")
            for i in range(n)]
    rows[3]["image"] = b"\xff\xd8\xff broken"  # one reject
    rows[5]["alt"] = "click here"  # junk caption: another
    path = tmp_path / "block0.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)
    return path


def segment(tmp_path, threads=4):
    runs = [
        StageRun(CountingAlign, AlignConfig(image_max_side=48), "align", "h1", str(tmp_path / "p1" / "blocks")),
        StageRun(CountingAlign, AlignConfig(image_max_side=32), "align2", "h2", str(tmp_path / "p2" / "blocks")),
    ]
    return runs, SegmentWorker(runs, source=False, threads=threads)


def test_each_stage_writes_its_block_and_a_finished_block_is_not_redone(tmp_path):
    path = records_file(tmp_path, 12)
    runs, worker = segment(tmp_path)
    block = Block(id="block0", path=str(path), kind="records")
    CountingAlign.seen = []
    counts = dict(worker.run_block(block))
    assert counts[0] == {"in": 12, "out": 12, "kept": 10, "rejected": {"image_corrupt": 1, "junk_text": 1}}
    assert counts[1] == {"in": 10, "out": 10, "kept": 10, "rejected": {}}
    assert len(CountingAlign.seen) == 12 + 10
    first = pq.read_table(block_dir(runs[0], "block0") / "data.parquet")
    second = pq.read_table(block_dir(runs[1], "block0") / "data.parquet")
    assert first["key"].to_pylist() == [f"k{i:03d}" for i in range(12) if i not in (3, 5)]  # input order kept
    assert max(second["image_width"].to_pylist()) == 32
    rejects = pq.read_table(block_dir(runs[0], "block0") / "rejects.parquet").to_pylist()
    assert {(r["key"], r["reason"], r["stage"], r["config_hash"]) for r in rejects} == {
        ("k003", "image_corrupt", "align", "h1"), ("k005", "junk_text", "align", "h1")}
    CountingAlign.seen = []
    assert worker.run_block(block) == [] and CountingAlign.seen == []


def test_a_block_the_first_stage_finished_resumes_from_what_it_kept(tmp_path):
    path = records_file(tmp_path, 8)
    runs, worker = segment(tmp_path)
    only_first = SegmentWorker(runs[:1], source=False, threads=2)
    only_first.run_block(Block(id="block0", path=str(path), kind="records"))
    CountingAlign.seen = []
    counts = dict(worker.run_block(Block(id="block0", path=str(path), kind="records")))
    assert list(counts) == [1] and counts[1]["in"] == 6
    assert len(CountingAlign.seen) == 6  # the second stage only, on the first stage's kept rows


def test_a_failing_block_publishes_nothing(tmp_path, monkeypatch):
    path = records_file(tmp_path, 6)
    runs, worker = segment(tmp_path)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mmcurate.pipeline.stream._BlockWriter.publish", broken)
    with pytest.raises(OSError):
        worker.run_block(Block(id="block0", path=str(path), kind="records"))
    for run in runs:
        assert not block_dir(run, "block0").exists()
        assert not list(block_dir(run, "block0").parent.glob(".block0.tmp-*"))


def test_counts_and_files_gathered_for_the_commit(tmp_path):
    path = records_file(tmp_path, 10)
    runs, worker = segment(tmp_path, threads=1)
    worker.run_block(Block(id="block0", path=str(path), kind="records"))
    blocks = [Block(id="block0", path=str(path), kind="records")]
    stats = block_counts(runs[0], blocks)
    assert stats == json.loads((block_dir(runs[0], "block0") / COUNTS).read_text())
    work = tmp_path / "work"
    link_blocks(runs[0], blocks, work)
    assert pq.read_table(work / "data" / "block0.parquet").num_rows == stats["kept"]
    assert pq.read_table(work / "rejects" / "block0.parquet").num_rows == sum(stats["rejected"].values())
    assert (block_dir(runs[0], "block0") / "data.parquet").exists()  # still there until the commit


def test_a_worker_does_not_publish_a_block_once_its_run_is_gone(tmp_path):
    """Ray workers can outlive a SIGKILLed CLI; what they fetched after the kill must not become a finished block."""
    from mmcurate.pipeline.rundir import RunDir
    from mmcurate.pipeline.stream import RunGone

    path = records_file(tmp_path, 6)
    rundir = RunDir(tmp_path / "run")
    with rundir.locked():
        guard = rundir.guard
        assert guard.alive()
    assert not guard.alive()  # the lock is free: the run that handed out the block is gone
    with rundir.locked():
        assert not guard.alive() and rundir.guard.alive()  # another run holds it now
        runs = [StageRun(CountingAlign, AlignConfig(), "align", "h1", str(tmp_path / "p1" / "blocks"), guard)]
        with pytest.raises(RunGone):
            SegmentWorker(runs, source=False, threads=2).run_block(Block(id="block0", path=str(path), kind="records"))
        assert not block_dir(runs[0], "block0").exists()
        assert not list(block_dir(runs[0], "block0").parent.glob(".block0.tmp-*"))


def test_pending_blocks_run_largest_first_and_a_source_keeps_its_order():
    committed = [Block(f"b{i}", f"/x/b{i}.parquet", "records", rows=n) for i, n in enumerate([3, 500, 62, 498, 358])]
    assert [b.id for b in pending_blocks(committed, {"b3"})] == ["b1", "b4", "b2", "b0"]
    planned = [Block(f"c{i}", f"/x/c{i}", "urls") for i in range(4)]
    assert [b.id for b in pending_blocks(planned, set())] == ["c0", "c1", "c2", "c3"]
