"""Fingerprints through the graph: a stage's covers every input's, so a change re-runs that stage and its
descendants and nothing on another branch; and the plan a fresh run directory gets."""

from __future__ import annotations

import json
from pathlib import Path

from mmcurate.pipeline.demo import DEMO_SITE
from mmcurate.pipeline.fingerprint import FileDigests
from mmcurate.pipeline.plan import plan
from mmcurate.pipeline.runner import plan_fingerprints
from mmcurate.schemas.workflow import load_workflow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "workflows" / "demo.yaml"
VARIABLES = {**DEMO_SITE.placeholders, "run_dir": "/r", "workflow_dir": str(REPO / "workflows")}


def fingerprints(tmp_path: Path, *overrides: str) -> dict[str, str]:
    wf = load_workflow(DEMO, overrides=list(overrides), variables=VARIABLES)
    return {p.spec.name: p.fingerprint
            for p in plan_fingerprints(wf, FileDigests(tmp_path / "digests.json"), None, save=False)}


def test_changing_one_branch_changes_that_branch_only(tmp_path):
    before = fingerprints(tmp_path)
    after = fingerprints(tmp_path, "audio_text.where=modality = 'audio' AND length(text) > 1")
    assert {n for n in before if before[n] != after[n]} == {"audio_text", "audio"}


def test_changing_a_shared_stage_changes_it_and_every_descendant_but_not_the_other_source(tmp_path):
    before = fingerprints(tmp_path)
    after = fingerprints(tmp_path, "align.image_max_side=200")
    assert {n for n in before if before[n] != after[n]} == {"align", "pii", "image_text", "images", "audio_text",
                                                            "audio"}
    after = fingerprints(tmp_path, "list.chunk_rows=7")
    assert {n for n in before if before[n] != after[n]} == {"list", "align", "pii", "image_text", "images",
                                                            "audio_text", "audio"}


def test_the_fingerprint_covers_every_input_in_the_order_written(tmp_path):
    wf = load_workflow(DEMO, variables=VARIABLES)
    planned = {p.spec.name: p for p in plan_fingerprints(wf, FileDigests(tmp_path / "d.json"), None, save=False)}
    assert planned["align"].covers["upstream"] == [planned["pages"].fingerprint, planned["list"].fingerprint]


def test_plan_of_the_demo_on_a_fresh_run_directory_runs_every_node_inputs_first(tmp_path, capsys):
    from mmcurate.pipeline.cli import main

    run_dir = tmp_path / "run"
    result = plan(DEMO, run_dir, services={"demo_site": DEMO_SITE})
    names = [n.name for n in result.nodes]
    assert names == ["pages", "list", "align", "pii", "image_text", "images", "audio_text", "audio"]
    for node in result.nodes:
        assert node.action == "run" and all(names.index(i) < names.index(node.name) for i in node.inputs)
        assert node.command[-2:] == ["--only", node.name]
    assert result.nodes[2].why == "inputs 'pages', 'list' run" and result.nodes[0].why == "never committed"
    assert [(n.name, n.shards) for n in result.nodes if n.shards] == [("images", "shards/images"),
                                                                       ("audio", "shards/audio")]
    assert not run_dir.exists()  # a plan writes nothing
    assert main(["plan", str(DEMO), "--run-dir", str(run_dir), "--json"]) == 0
    assert [n["name"] for n in json.loads(capsys.readouterr().out)["nodes"]] == names
    assert main(["plan", str(DEMO), "--run-dir", str(run_dir), "--mermaid"]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR") and "n0_pages --> n2_align" in mermaid and "n1_list --> n2_align" in mermaid
    assert "n2_align --> n3_pii" in mermaid and "n3_pii --> n6_audio_text" in mermaid and 'n7_audio[("audio' in mermaid
    assert main(["plan", str(DEMO), "--run-dir", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "align       align        <- pages, list" in text and "8 to run, 0 to reuse" in text


def test_the_readme_shows_the_demo_graph_plan_prints(tmp_path, capsys):
    """The Mermaid block in the README is what ``mmcurate plan workflows/demo.yaml --mermaid`` prints today."""
    from mmcurate.pipeline.cli import main

    assert main(["plan", str(DEMO), "--run-dir", str(tmp_path / "r"), "--mermaid"]) == 0
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text()
    assert f"```mermaid\n{printed}\n```" in readme
    assert "workflows/demo.yaml" in readme


def test_mermaid_ids_are_unique_where_names_differ_only_by_a_dash(tmp_path):
    from mmcurate.pipeline.plan import plan

    path = tmp_path / "clash.yaml"
    path.write_text("name: c\nstages:\n  - {stage: crawl, id: web, seeds: ['http://127.0.0.1:1/']}\n"
                    "  - {stage: align}\n  - {stage: select, id: a-b, where: 'true'}\n  - {stage: shard, id: s1}\n"
                    "  - {stage: select, id: a_b, input: align, where: 'true'}\n  - {stage: shard, id: s2}\n")
    lines = plan(path, tmp_path / "run").to_mermaid().splitlines()[1:]
    nodes = [line.split("[")[0].split("(")[0].strip() for line in lines if "-->" not in line]
    assert len(nodes) == len(set(nodes)) == 6
    edges = {tuple(line.strip().split(" --> ")) for line in lines if "-->" in line}
    by_label = {line.split('"')[1].split("<br/>")[0]: line.split("[")[0].split("(")[0].strip()
                for line in lines if "-->" not in line}
    assert (by_label["a-b"], by_label["s1"]) in edges and (by_label["a_b"], by_label["s2"]) in edges
    assert (by_label["a_b"], by_label["s1"]) not in edges
