"""Several sinks, several shard sets: DIR/shards/<sink>/ each, DIR/shards as before for one; a run directory moves
between the two layouts (a workflow that grows a second branch, or loses one) without a stale link left behind."""

from __future__ import annotations

import os

from mmcurate.pipeline.rundir import RunDir


def _sink(rd: RunDir, name: str, payload: bytes, fingerprint: str, shard_set: str | None) -> None:
    work = rd.begin_stage(name)
    (work / "shards").mkdir()
    (work / "shards" / "shard-000000.tar").write_bytes(payload)
    rd.commit_stage(name, work, {"fingerprint": fingerprint, "stats": {}}, sink=True, shard_set=shard_set)


def test_one_sink_links_dir_shards_and_several_link_one_folder_each(tmp_path):
    rd = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    with rd.locked():
        _sink(rd, "shard", b"one", "a", None)
        assert os.readlink(root / "shards") == "shard/shards"
        assert (root / "shards" / "shard-000000.tar").read_bytes() == b"one"
        assert list(rd.shard_sets()) == [""]

        # the workflow grows two branches: DIR/shards becomes a folder of links, the old link is gone
        _sink(rd, "images", b"img", "b", "images")
        _sink(rd, "audio", b"aud", "c", "audio")
        assert (root / "shards").is_dir() and not (root / "shards").is_symlink()
        assert os.readlink(root / "shards" / "images") == "../images/shards"
        assert (root / "shards" / "images" / "shard-000000.tar").read_bytes() == b"img"
        assert (root / "shards" / "audio" / "shard-000000.tar").read_bytes() == b"aud"
        assert sorted(rd.shard_sets()) == ["audio", "images"]
        assert not (rd.current_generation("shard") / "shards" / "images").exists()  # nothing written into the old one

        # a re-run of one branch moves its link only
        _sink(rd, "audio", b"aud2", "d", "audio")
        assert (root / "shards" / "audio" / "shard-000000.tar").read_bytes() == b"aud2"
        assert (root / "shards" / "images" / "shard-000000.tar").read_bytes() == b"img"

        # and back to one sink: DIR/shards is its link again
        _sink(rd, "shard", b"two", "e", None)
        assert os.readlink(root / "shards") == "shard/shards"
        assert list(rd.shard_sets()) == [""]
        assert (root / "images" / "shards" / "shard-000000.tar").read_bytes() == b"img"  # the stage itself stays
