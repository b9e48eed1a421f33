import fcntl
import json
import os
import subprocess
import sys

import pytest

from mmcurate.pipeline.rundir import MARKER, READERS_LOCK, RunDir


def _stage(rd: RunDir, name: str, payload: bytes, reject: bytes = b"r") -> object:
    work = rd.begin_stage(name)
    (work / "data").mkdir()
    (work / "data" / "part-0.parquet").write_bytes(payload)
    (work / "rejects" / "part-0.parquet").write_bytes(reject)
    return work


def test_commit_publishes_data_rejects_and_marker_together_and_clears_work(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        work = _stage(rd, "align", b"x")
        assert not rd.is_done("align", "fp1")
        rd.commit_stage("align", work, {"fingerprint": "fp1", "stats": {}})
        assert rd.is_done("align", "fp1") and not rd.is_done("align", "fp2")
        assert (rd.rejects_dir("align") / "part-0.parquet").read_bytes() == b"r"
        assert (rd.data_dir("align") / "part-0.parquet").read_bytes() == b"x"
        assert json.loads((rd.stage_dir("align") / MARKER).read_text())["fingerprint"] == "fp1"
        assert rd.stage_dir("align").is_symlink() and not work.exists()
        # the stage is one generation directory: data, rejects and marker live and move together
        generation = rd.current_generation("align")
        assert {p.name for p in generation.iterdir()} == {"data", "rejects", MARKER}


def test_recommit_replaces_old_output_and_collects_the_old_generation(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        for fp, payload in (("a", b"old"), ("b", b"new")):
            rd.commit_stage("crawl", _stage(rd, "crawl", payload), {"fingerprint": fp, "stats": {}})
        assert (rd.data_dir("crawl") / "part-0.parquet").read_bytes() == b"new"
        assert rd.is_done("crawl", "b")
        assert len(list((rd.generations_root / "crawl").iterdir())) == 1


def test_a_sink_generation_held_by_a_reader_survives_a_recommit(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        work = rd.begin_stage("shard")
        (work / "shards").mkdir()
        (work / "shards" / "shard-000000.tar").write_bytes(b"first")
        rd.commit_stage("shard", work, {"fingerprint": "a", "stats": {}}, sink=True)
        held = os.path.realpath(rd.shards_dir / "shard-000000.tar")
        reader = open(rd.shards_dir / READERS_LOCK)
        fcntl.flock(reader, fcntl.LOCK_SH)
        work = rd.begin_stage("shard")
        (work / "shards").mkdir()
        (work / "shards" / "shard-000000.tar").write_bytes(b"second")
        rd.commit_stage("shard", work, {"fingerprint": "b", "stats": {}}, sink=True)
        assert (rd.shards_dir / "shard-000000.tar").read_bytes() == b"second"
        assert open(held, "rb").read() == b"first"  # the reader's generation is still whole
        reader.close()
        rd.collect_generations()
        assert not os.path.exists(held)


def test_uncommitted_work_is_discarded_on_next_lock(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        work = rd.begin_stage("crawl")
        (work / "half-written").write_bytes(b"?")
    # a killed run leaves .work behind; the next run must not trust it
    with rd.locked():
        assert not any(rd.work_root.iterdir())
        assert not rd.is_done("crawl", "anything")


def test_second_writer_is_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        with pytest.raises(RuntimeError, match="in use"):
            with RunDir(tmp_path / "run").locked():
                pass


KILLED_COMMIT = """
import os, sys
from mmcurate.pipeline.rundir import RunDir
rd = RunDir(sys.argv[1])
with rd.locked():
    for fp, payload in (("old", b"old"), ("new", b"new")):
        work = rd.begin_stage("align")
        (work / "data").mkdir()
        (work / "data" / "part-0.parquet").write_bytes(payload)
        if fp == "new":
            os.environ["MMCURATE_KILL_AT"] = sys.argv[2]
        rd.commit_stage("align", work, {"fingerprint": fp, "stats": {}})
"""


@pytest.mark.parametrize("point, expected", [("publish:align:before", "old"), ("publish:align:after", "new")])
def test_a_commit_killed_on_either_side_of_the_link_swap_leaves_one_whole_generation(tmp_path, point, expected):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(run), point], start_new_session=True)
    assert proc.returncode == -9
    rd = RunDir(run)
    marker = rd.marker("align")
    assert marker["fingerprint"] == expected
    assert (rd.data_dir("align") / "part-0.parquet").read_bytes() == expected.encode()
    with rd.locked():  # the next run collects the generation nobody points at
        assert len(list((rd.generations_root / "align").iterdir())) == 1


def test_progress_left_by_a_kill_after_the_link_swap_is_discarded_when_the_stage_is_reused(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        rd.progress_dir("crawl", "fp").mkdir(parents=True)
        rd.progress_dir("crawl", "other").mkdir(parents=True)
        rd.discard_progress("crawl", "fp")
        assert not rd.progress_dir("crawl", "fp").exists() and rd.progress_dir("crawl", "other").exists()


def test_a_committed_file_deleted_or_changed_by_hand_makes_the_stage_not_done(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        rd.commit_stage("align", _stage(rd, "align", b"payload"), {"fingerprint": "fp", "stats": {}})
        assert rd.is_done("align", "fp")
        (rd.data_dir("align") / "part-0.parquet").write_bytes(b"short")
        assert not rd.is_done("align", "fp")
        (rd.data_dir("align") / "part-0.parquet").unlink()
        assert not rd.is_done("align", "fp")
