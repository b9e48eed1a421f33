"""Several sinks, several shard sets: DIR/shards/<sink>/ each, DIR/shards as before for one; a run directory moves
between the two layouts (a workflow that grows a second branch, or loses one) without a stale link left behind,
and a sink reused under a new layout is linked where the new layout puts it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.runner import run_workflow
from mmcurate.schemas.record import RECORD_SCHEMA


def _sink(rd: RunDir, name: str, payload: bytes, fingerprint: str, sinks: tuple[str, ...]) -> None:
    work = rd.begin_stage(name)
    (work / "shards").mkdir()
    (work / "shards" / "shard-000000.tar").write_bytes(payload)
    rd.commit_stage(name, work, {"fingerprint": fingerprint, "stats": {}}, sink=True, shard_sets=sinks)


def test_one_sink_links_dir_shards_and_several_link_one_folder_each(tmp_path):
    rd = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    with rd.locked():
        _sink(rd, "shard", b"one", "a", ("shard",))
        assert os.readlink(root / "shards") == "shard/shards"
        assert (root / "shards" / "shard-000000.tar").read_bytes() == b"one"
        assert list(rd.shard_sets()) == [""]

        # the workflow grows two branches: DIR/shards becomes a folder of links, the old link is gone
        _sink(rd, "images", b"img", "b", ("images", "audio"))
        _sink(rd, "audio", b"aud", "c", ("images", "audio"))
        assert sorted(os.listdir(root / "shards")) == ["audio", "images"]
        assert (root / "shards" / "images" / "shard-000000.tar").read_bytes() == b"img"
        assert (root / "shards" / "audio" / "shard-000000.tar").read_bytes() == b"aud"
        assert os.path.realpath(root / "shards" / "images") == str(rd.current_generation("images") / "shards")
        assert sorted(rd.shard_sets()) == ["audio", "images"]
        assert not (rd.current_generation("shard") / "shards" / "images").exists()  # nothing written into the old one

        # a re-run of one branch moves its link only
        _sink(rd, "audio", b"aud2", "d", ("images", "audio"))
        assert (root / "shards" / "audio" / "shard-000000.tar").read_bytes() == b"aud2"
        assert (root / "shards" / "images" / "shard-000000.tar").read_bytes() == b"img"

        # and back to one sink: DIR/shards is its link again, and no folder of links is left
        _sink(rd, "shard", b"two", "e", ("shard",))
        assert os.readlink(root / "shards") == "shard/shards"
        assert list(rd.shard_sets()) == [""]
        assert (root / "images" / "shards" / "shard-000000.tar").read_bytes() == b"img"  # the stage itself stays
        assert not any((root / ".shard-sets").iterdir())


def test_a_sink_committing_beside_a_reused_one_keeps_the_reused_one_in_dir_shards(tmp_path):
    """One sink 'images' (DIR/shards -> images/shards), then a workflow with 'images' reused and 'audio' new: when
    audio commits, DIR/shards holds both; at no point does the images set leave it."""
    rd = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    with rd.locked():
        _sink(rd, "images", b"img", "a", ("images",))
        assert os.readlink(root / "shards") == "images/shards"
        _sink(rd, "audio", b"aud", "b", ("images", "audio"))
        assert sorted(rd.shard_sets()) == ["audio", "images"]
        assert (root / "shards" / "images" / "shard-000000.tar").read_bytes() == b"img"


def test_the_swap_is_one_rename_of_dir_shards_never_missing(tmp_path, monkeypatch):
    """DIR/shards is replaced by a rename of a ready link: when that rename happens the new folder of links is
    whole, and up to it DIR/shards still shows the old layout."""
    rd = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    seen = []
    real_replace = os.replace

    def watching(src, dst, *args, **kwargs):
        if str(dst) == str(root / "shards"):
            target = os.readlink(src)
            seen.append((os.path.exists(root / "shards"),
                         sorted(os.listdir(root / target)) if target.startswith(".shard-sets/") else target))
        return real_replace(src, dst, *args, **kwargs)

    with rd.locked():
        _sink(rd, "images", b"img", "a", ("images",))
        monkeypatch.setattr(os, "replace", watching)
        _sink(rd, "audio", b"aud", "b", ("images", "audio"))
        _sink(rd, "images", b"img", "c", ("images",))
    # each swap: DIR/shards was there up to it, and what it swapped in was whole
    assert seen == [(True, ["audio", "images"]), (True, "images/shards")]


WORKFLOW = """name: sets
stages:
  - {stage: crawl, id: web, url_lists: [{path: "${workflow_dir}/urls.csv"}]}
  - {stage: align}
  - {stage: select, id: image_text, input: align, where: "modality = 'image'"}
  - {stage: shard, id: images}
"""
AUDIO = """  - {stage: select, id: audio_text, input: align, where: "modality = 'audio'"}
  - {stage: shard, id: audio}
"""


def _commit_all(workflow: Path, run: Path, commit_sinks_as: tuple[str, ...]) -> None:
    """Every stage of ``workflow`` committed under the fingerprint a run computes (empty data, no Ray), its
    sinks linked as a run of a workflow with sinks ``commit_sinks_as`` would have left them."""
    from mmcurate.pipeline.plan import plan

    rd = RunDir(run)
    nodes = plan(workflow, run).nodes
    with rd.locked():
        for node in nodes:
            work = rd.begin_stage(node.name, node.fingerprint)
            (work / "data").mkdir()
            pq.write_table(RECORD_SCHEMA.empty_table(), work / "data" / "part-0.parquet")
            if node.role == "sink":
                (work / "shards").mkdir()
                (work / "shards" / "shard-000000.tar").write_bytes(node.name.encode())
            rd.commit_stage(node.name, work, {"fingerprint": node.fingerprint, "stats": {"in": 0, "out": 0,
                            "kept": 0, "rejected": {}}}, sink=node.role == "sink",
                            shard_sets=commit_sinks_as if node.name in commit_sinks_as else (node.name,))


def test_a_run_whose_sinks_are_all_reused_leaves_dir_shards_as_its_workflow_lays_it_out(tmp_path):
    (tmp_path / "urls.csv").write_text("url\nhttp://127.0.0.1:1/a.jpg\n")
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(WORKFLOW)
    two.write_text(WORKFLOW + AUDIO)
    run = tmp_path / "run"

    # grown: images committed under the one-sink layout, audio committed too; a run of two reuses both
    _commit_all(two, run, commit_sinks_as=("images",))
    os.unlink(run / "shards")
    os.symlink("images/shards", run / "shards")  # what a one-sink run left
    result = run_workflow(two, run)
    assert {s.status for s in result.stages} == {"reused"}
    assert sorted(RunDir(run).shard_sets()) == ["audio", "images"]
    assert (run / "shards" / "images" / "shard-000000.tar").read_bytes() == b"images"
    assert (run / "shards" / "audio" / "shard-000000.tar").read_bytes() == b"audio"

    # shrunk: the same directory run with one sink; DIR/shards is its link, no stale audio set
    result = run_workflow(one, run)
    assert {s.status for s in result.stages} == {"reused"}
    assert os.readlink(run / "shards") == "images/shards"
    assert list(RunDir(run).shard_sets()) == [""]
    assert json.loads((run / "manifest.json").read_text())["stages"][-1]["name"] == "images"
