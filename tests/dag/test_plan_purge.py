"""``mmcurate plan`` predicts what a run does on a run directory whose raw text was purged (``retain_raw_text:
false``): a purged stage that a stage which must run reads runs again, and plan says so; ``--only NODE`` whose input
must run again exits 3 naming it and changes nothing; the nodes run alone in plan order all succeed.

The stages do not run here: the runner's two executors are replaced by ones that commit an empty generation under
the step's fingerprint (what the runner decides to run or reuse, and the purge itself, are the real code; only the
pii stage's redactor is the identity, the records being empty).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmcurate.pipeline import raw_text, runner
from mmcurate.pipeline.plan import plan
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.runner import run_workflow
from mmcurate.schemas.record import RECORD_SCHEMA

GRAPH = """name: purged
retain_raw_text: false
stages:
  - {stage: crawl, id: pages, url_lists: [{path: "${workflow_dir}/pages.csv"}]}
  - {stage: crawl, id: list, url_lists: [{path: "${workflow_dir}/list.csv"}]}
  - {stage: align, input: [pages, list]}
  - {stage: pii}
  - {stage: select, id: image_text, input: pii, where: "modality = 'image'"}
  - {stage: shard, id: images}
  - {stage: select, id: audio_text, input: pii, where: "modality = 'audio'"}
  - {stage: shard, id: audio}
"""
NAMES = ["pages", "list", "align", "pii", "image_text", "images", "audio_text", "audio"]
BEFORE_PII = {"pages", "list", "align"}
STATS = {"in": 0, "out": 0, "kept": 0, "rejected": {}}


@pytest.fixture
def ran(monkeypatch) -> list[str]:
    """The stages the runner ran, in order; each commits an empty generation as a real run would."""
    names: list[str] = []

    def run_segment(workflow, segment, rundir):
        for step in segment:
            names.append(step.spec.name)
            work = rundir.begin_stage(step.spec.name, step.fingerprint)
            (work / "data").mkdir()
            pq.write_table(RECORD_SCHEMA.empty_table(), work / "data" / "part-0.parquet")
            runner._commit(rundir, step, work, dict(STATS), sink=False)
        return [dict(STATS) for _ in segment]

    def run_sink(workflow, step, rundir):
        names.append(step.spec.name)
        work = rundir.begin_stage(step.spec.name, step.fingerprint)
        (work / "shards").mkdir()
        (work / "shards" / "shard-000000.tar").write_bytes(step.spec.name.encode())
        runner._commit(rundir, step, work, dict(STATS), sink=True, shard_sets=tuple(s.name for s in workflow.sinks))
        return dict(STATS)

    monkeypatch.setattr(runner, "_run_segment", run_segment)
    monkeypatch.setattr(runner, "_run_sink", run_sink)
    monkeypatch.setattr(runner, "init_ray", lambda address: None)
    monkeypatch.setattr(raw_text, "_redactor", lambda config: lambda texts: texts)
    return names


@pytest.fixture
def purged(tmp_path, ran) -> tuple[Path, Path]:
    """A workflow shaped like the demo and a run directory after its first full run: pages, list, align purged."""
    (tmp_path / "pages.csv").write_text("url\nhttp://127.0.0.1:1/a.jpg\n")
    (tmp_path / "list.csv").write_text("url\nhttp://127.0.0.1:1/b.jpg\n")
    workflow = tmp_path / "graph.yaml"
    workflow.write_text(GRAPH)
    run = tmp_path / "run"
    run_workflow(workflow, run)
    assert ran == NAMES
    assert {n for n in NAMES if RunDir(run).marker(n).get(raw_text.PURGED)} == BEFORE_PII
    ran.clear()
    return workflow, run


def state(run: Path) -> dict[str, object]:
    """Every link of the run directory and every committed marker: what a refused node must leave as it was."""
    rd = RunDir(run)
    return {"links": {n: os.readlink(run / n) for n in [*NAMES, "shards"] if (run / n).is_symlink()},
            "markers": {n: rd.marker(n) for n in NAMES}}


ALL = set(NAMES)


@pytest.mark.parametrize(("override", "to_run", "why"), [
    (None, set(), {}),
    ("align.image_max_side=128", ALL, {
        "pages": "its raw text was purged (retain_raw_text: false) and 'align', which must run, reads it",
        "align": "its config changed"}),
    ("pii.context_window=5", ALL, {
        "pages": "its raw text was purged (retain_raw_text: false) and 'pii', which must run, reads it through 'align'",
        "align": "its raw text was purged (retain_raw_text: false) and 'pii', which must run, reads it",
        "pii": "its config changed"}),
    ("audio_text.where=modality = 'audio' AND length(text) > 1", {"audio_text", "audio"}, {
        "audio_text": "its config changed"}),  # a branch after pii: redacted records, no re-crawl
])
def test_plan_says_what_a_run_of_a_purged_directory_does(purged, ran, override, to_run, why):
    workflow, run = purged
    overrides = [override] if override else []
    nodes = plan(workflow, run, overrides=overrides).nodes
    assert {n.name for n in nodes if n.action == "run"} == to_run
    assert {n.name: n.why for n in nodes if n.name in why} == why
    result = run_workflow(workflow, run, overrides=overrides)
    assert {s.name: s.status for s in result.stages} == \
        {n.name: {"run": "ran", "reuse": "reused"}[n.action] for n in nodes}
    assert ran == [n.name for n in nodes if n.action == "run"]
    assert {n.action for n in plan(workflow, run, overrides=overrides).nodes} == {"reuse"}
    assert {n for n in NAMES if RunDir(run).marker(n).get(raw_text.PURGED)} == BEFORE_PII  # purged again


@pytest.mark.parametrize("override", ["align.image_max_side=128", "pii.context_window=5"])
def test_nodes_run_alone_in_plan_order_on_a_purged_directory(purged, ran, capsys, override):
    from mmcurate.pipeline.cli import main

    workflow, run = purged
    nodes = plan(workflow, run, overrides=[override]).nodes
    assert [n.name for n in nodes if n.action == "run"] == NAMES

    # align out of order: its input pages must run again first; nothing is removed or changed
    before = state(run)
    assert main(["run", str(workflow), "--run-dir", str(run), "--set", override, "--only", "align"]) == 3
    err = capsys.readouterr().err
    assert "stage 'align': input 'pages' is due to run again (its raw text was purged (retain_raw_text: false)" in err
    assert "run '--only pages' first" in err
    assert state(run) == before and ran == []
    assert main(["run", str(workflow), "--run-dir", str(run), "--set", override, "--only", "pii"]) == 3
    assert "stage 'pii': input 'align' is " in capsys.readouterr().err
    assert state(run) == before and ran == []

    for node in nodes:  # what an orchestrator's task per node runs, in plan --json order
        result = run_workflow(workflow, run, overrides=[override], only=node.name)
        assert [(s.name, s.status) for s in result.stages] == [(node.name, "ran")]
    assert ran == NAMES
    after = plan(workflow, run, overrides=[override]).nodes
    assert {n.action for n in after} == {"reuse"}, [(n.name, n.why) for n in after]
    assert {n for n in NAMES if RunDir(run).marker(n).get(raw_text.PURGED)} == BEFORE_PII
    assert sorted(RunDir(run).shard_sets()) == ["audio", "images"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert {s["name"]: s["status"] for s in manifest["stages"]}["audio"] == "ran"


def test_a_purged_stage_never_feeds_a_stage_even_after_retain_raw_text_is_turned_back_on(purged, ran):
    workflow, run = purged
    workflow.write_text(GRAPH.replace("retain_raw_text: false", "retain_raw_text: true"))
    nodes = plan(workflow, run, overrides=["align.image_max_side=128"]).nodes
    assert {n.name: n.action for n in nodes}["pages"] == "run"
    run_workflow(workflow, run, overrides=["align.image_max_side=128"])
    assert ran == NAMES and not any(RunDir(run).marker(n).get(raw_text.PURGED) for n in NAMES)
