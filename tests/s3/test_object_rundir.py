"""The run directory's object-store primitives on a real S3-compatible server, without Ray: a generation is
published by one pointer PUT (a kill on either side of it leaves one whole generation), a directory is done only
once its ``_DONE`` is written, the lock is a lease, and a reader's lease keeps a superseded generation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from mmcurate.pipeline import rundir as rundir_module
from mmcurate.pipeline.rundir import (
    MARKER,
    READERS_LOCK,
    RunDir,
    RunDirBusy,
    reader_leases,
)
from mmcurate.pipeline.storage import CACHE_ENV, DONE, POINTER, storage_for

pytestmark = pytest.mark.s3


@pytest.fixture
def run_url(s3, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return s3.url(f"unit-{uuid.uuid4().hex[:8]}")


def _stage(rd: RunDir, name: str, payload: bytes, fingerprint: str) -> object:
    """A generation as the runner builds one remotely: a worker's file linked (server-side copy) into its
    prefix, and a file of the driver's own in the local work dir."""
    work = rd.begin_stage(name, fingerprint)
    block = rd.location(".progress", f"{name}-{fingerprint}", "blocks", "b0", "data.parquet")
    rd.store.write_bytes(block, payload)
    rd.store.link_many([(block, f"{rd.staging_location(work)}/data/b0.parquet")])
    (work / "pages").mkdir()
    (work / "pages" / "level-000.parquet").write_bytes(b"driver's own")
    return work


@pytest.mark.timeout(120)
def test_a_commit_is_one_pointer_put_over_a_whole_generation(run_url, s3fs_client):
    rd = RunDir(run_url)
    with rd.locked():
        assert not rd.is_done("align", "fp1")
        rd.commit_stage("align", _stage(rd, "align", b"x", "fp1"), {"fingerprint": "fp1", "stats": {}})
        assert rd.is_done("align", "fp1") and not rd.is_done("align", "fp2")
        generation = rd.current_generation("align")
        assert generation.startswith(f"{run_url}/.generations/align/fp1-")
        assert json.loads(s3fs_client.cat_file(f"{run_url}/align/{POINTER}"))["target"] == generation[len(run_url) + 1:]
        assert s3fs_client.cat_file(f"{rd.data_dir('align')}/b0.parquet") == b"x"
        assert s3fs_client.cat_file(f"{generation}/pages/level-000.parquet") == b"driver's own"
        marker = rd.marker("align")
        assert marker["files"] == {"data/b0.parquet": 1, "pages/level-000.parquet": 12}
        assert rd.rejects_dir("align") == f"{generation}/rejects"  # DIR/rejects/align follows DIR/align
        assert not [p for p in s3fs_client.find(run_url) if "/.progress/" in p]  # removed at commit
        # a committed file changed by hand makes the stage not done
        s3fs_client.pipe_file(f"{generation}/data/b0.parquet", b"longer")
        assert not rd.is_done("align", "fp1")
    assert not s3fs_client.exists(f"{run_url}/.lock")  # released


KILLED_COMMIT = """
import os, sys
from mmcurate.pipeline.rundir import RunDir
rd = RunDir(sys.argv[1])
with rd.locked():
    for fp, payload in (("old", b"old"), ("new", b"new")):
        work = rd.begin_stage("align", fp)
        rd.store.write_bytes(rd.staging_location(work) + "/data/part-0.parquet", payload)
        if fp == "new":
            os.environ["MMCURATE_KILL_AT"] = sys.argv[2]
        rd.commit_stage("align", work, {"fingerprint": fp, "stats": {}})
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point, expected", [("publish:align:before", "old"), ("publish:align:after", "new")])
def test_a_commit_killed_on_either_side_of_the_pointer_put_leaves_one_whole_generation(
        run_url, s3fs_client, point, expected):
    proc = subprocess.run([sys.executable, "-c", KILLED_COMMIT, run_url, point], start_new_session=True,
                          env=dict(os.environ))
    assert proc.returncode == -9
    rd = RunDir(run_url)
    assert rd.marker("align")["fingerprint"] == expected
    assert s3fs_client.cat_file(f"{rd.data_dir('align')}/part-0.parquet") == expected.encode()
    with rd.locked():  # the killed run's lease is taken over at once: same host, its process is gone
        assert rd.is_done("align", expected)


@pytest.mark.timeout(60)
def test_a_directory_is_published_by_its_done_object_and_a_retry_clears_what_a_killed_attempt_left(s3, s3fs_client):
    store = storage_for(s3.url())
    final = s3.url(f"dirs-{uuid.uuid4().hex[:8]}", "blocks", "b0")
    s3fs_client.pipe_file(f"{final}/rejects.parquet", b"from a killed attempt")  # no _DONE: unfinished
    assert not store.published(final)
    staged = store.staging(final)
    (staged / "data.parquet").write_bytes(b"d")
    (staged / "counts.json").write_text("{}")
    store.publish(staged, final)
    assert store.published(final) and not staged.exists()
    assert set(store.files(final)) == {"counts.json", "data.parquet", DONE}
    assert store.published_children(final.rsplit("/", 1)[0]) == ["b0"]


@pytest.mark.timeout(60)
def test_the_lease_refuses_a_live_holder_and_takes_over_an_expired_or_dead_one(run_url, s3fs_client):
    lock = f"{run_url}/.lock"

    def holder(**fields):
        s3fs_client.pipe_file(lock, json.dumps({"token": "t", "host": "other-host", "pid": 1,
                                                "expires": time.time() + 60, **fields}).encode())

    holder()  # another machine, lease running
    with pytest.raises(RunDirBusy, match="other-host"), RunDir(run_url).locked():
        pass
    holder(expires=time.time() - 1)  # another machine whose lease ran out
    with RunDir(run_url).locked():
        assert json.loads(s3fs_client.cat_file(lock))["pid"] == os.getpid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder(host=socket.gethostname(), pid=dead.pid)  # this machine, its process gone: no wait for the lease
    with RunDir(run_url).locked():
        with pytest.raises(RunDirBusy, match="in use"), RunDir(run_url).locked():
            pass  # and one machine never runs two


@pytest.mark.timeout(60)
def test_a_lease_renewal_that_finds_the_lock_taken_stops_the_next_commit(run_url, s3fs_client, monkeypatch):
    monkeypatch.setenv("MMCURATE_LEASE_S", "0.6")
    rd = RunDir(run_url)
    with rd.locked():
        s3fs_client.pipe_file(f"{run_url}/.lock", b'{"token": "someone else"}')
        time.sleep(1.0)  # a renewal (every 0.2 s) finds the object changed
        with pytest.raises(RunDirBusy, match="renewed"):
            rd.commit_stage("align", _stage(rd, "align", b"x", "fp"), {"fingerprint": "fp", "stats": {}})
    assert rd.current_generation("align") is None


@pytest.mark.timeout(60)
def test_a_reader_lease_keeps_a_superseded_shard_generation(run_url, s3fs_client, monkeypatch):
    monkeypatch.setattr(rundir_module, "GENERATION_GRACE_S", 0.0)
    rd = RunDir(run_url)
    with rd.locked():
        work = rd.begin_stage("shard", "a")
        rd.store.write_bytes(rd.staging_location(work) + "/shards/shard-000000.tar", b"first")
        rd.commit_stage("shard", work, {"fingerprint": "a", "stats": {}}, sink=True)
        first = rd.resolve("shards")
        assert s3fs_client.exists(f"{first}/{READERS_LOCK}")
        with reader_leases([first]) as leases:
            assert len(leases) == 1
            work = rd.begin_stage("shard", "b")
            rd.store.write_bytes(rd.staging_location(work) + "/shards/shard-000000.tar", b"second")
            rd.commit_stage("shard", work, {"fingerprint": "b", "stats": {}}, sink=True)
            assert s3fs_client.cat_file(f"{rd.resolve('shards')}/shard-000000.tar") == b"second"
            assert s3fs_client.cat_file(f"{first}/shard-000000.tar") == b"first"  # kept for its reader
        rd.collect_generations()
        assert not s3fs_client.exists(f"{first}/shard-000000.tar")
        assert rd.is_done("shard", "b") and MARKER in rd.store.files(rd.current_generation("shard"))


@pytest.mark.timeout(120)
def test_shard_set_pointers_follow_the_workflows_sinks(run_url, s3fs_client):
    """One sink: DIR/shards/_CURRENT.json; several: DIR/shards/<sink>/_CURRENT.json each, a reused sink's included;
    back to one: the set pointers are gone."""
    rd = RunDir(run_url)

    def sink(name: str, payload: bytes, fingerprint: str, sinks: tuple[str, ...]) -> None:
        work = rd.begin_stage(name, fingerprint)
        rd.store.write_bytes(rd.staging_location(work) + "/shards/shard-000000.tar", payload)
        rd.commit_stage(name, work, {"fingerprint": fingerprint, "stats": {}}, sink=True, shard_sets=sinks)

    def read(*parts: str) -> bytes:
        return s3fs_client.cat_file(f"{rd.resolve('shards', *parts)}/shard-000000.tar")

    with rd.locked():
        sink("images", b"img", "a", ("images",))
        assert list(rd.shard_sets()) == [""] and read() == b"img"
        sink("audio", b"aud", "b", ("images", "audio"))  # images reused under the new layout
        assert sorted(rd.shard_sets()) == ["audio", "images"]
        assert read("images") == b"img" and read("audio") == b"aud"
        assert not rd.store.exists(rd.location("shards", POINTER))
        rd.link_shard_sets(["images"])  # the workflow lost its audio branch
        assert list(rd.shard_sets()) == [""] and read() == b"img"
        assert not rd.store.exists(rd.location("shards", "audio", POINTER))
