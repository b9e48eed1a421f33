import json

from mmcurate.pipeline.rundir import MARKER, RunDir


def test_commit_publishes_rejects_then_stage_and_clears_work(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        work = rd.begin_stage("align")
        (work / "stage" / "data").mkdir()
        (work / "stage" / "data" / "part-0.parquet").write_bytes(b"x")
        (work / "rejects" / "part-0.parquet").write_bytes(b"r")
        assert not rd.is_done("align", "fp1")
        rd.commit_stage("align", work, {"fingerprint": "fp1", "stats": {}})
        assert rd.is_done("align", "fp1") and not rd.is_done("align", "fp2")
        assert (rd.rejects_dir("align") / "part-0.parquet").read_bytes() == b"r"
        assert json.loads((rd.stage_dir("align") / MARKER).read_text())["fingerprint"] == "fp1"
        assert not work.exists()


def test_recommit_replaces_old_output(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        for fp, payload in (("a", b"old"), ("b", b"new")):
            work = rd.begin_stage("crawl")
            (work / "stage" / "f").write_bytes(payload)
            rd.commit_stage("crawl", work, {"fingerprint": fp, "stats": {}})
        assert (rd.stage_dir("crawl") / "f").read_bytes() == b"new"
        assert rd.is_done("crawl", "b")


def test_uncommitted_work_is_discarded_on_next_lock(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.locked():
        work = rd.begin_stage("crawl")
        (work / "stage" / "half-written").write_bytes(b"?")
    # a killed run leaves .work behind; the next run must not trust it
    with rd.locked():
        assert not any(rd.work_root.iterdir())
        assert not rd.is_done("crawl", "anything")


def test_second_writer_is_refused(tmp_path):
    import pytest

    rd = RunDir(tmp_path / "run")
    with rd.locked():
        with pytest.raises(RuntimeError, match="in use"):
            with RunDir(tmp_path / "run").locked():
                pass
