"""The demo graph through the real ``mmcurate`` command, its own demo server and Ray per invocation:

* every node run alone with ``--only``, in the order ``plan --json`` gives, writes the same shards, byte for byte,
  as one full run; a node whose input is not committed exits 3 naming it;
* a change to one branch's stage re-runs that branch only: the other branch and the shared stages are reused and
  the demo server (its access log) sees no request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmcurate.pipeline.demo import demo_site_root, demo_workflow_path

pytestmark = pytest.mark.e2e

MMCURATE = str(Path(sys.executable).parent / "mmcurate")
WORKFLOW = str(demo_workflow_path("demo"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# the shards hold the URLs they were crawled from: runs compared across run directories serve on one port
SITE = ["--set", "serve.demo_site.pages=25", "--set", f"serve.demo_site.port={_free_port()}"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([MMCURATE, *args], capture_output=True, text=True, env=env, timeout=900, check=False)


def shard_files(run: Path) -> dict[str, bytes]:
    return {f"{folder.name}/{p.name}": p.read_bytes()
            for folder in sorted((run / "shards").iterdir()) for p in sorted(folder.iterdir())
            if p.suffix in (".tar", ".parquet", ".json")}


def statuses(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}


def requests(run: Path) -> int:
    return len((demo_site_root(run) / "access.log").read_text().splitlines())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dag") / "full"
    out = cli("run", WORKFLOW, "--run-dir", str(run), *SITE)
    assert out.returncode == 0, out.stderr[-3000:]
    shards = shard_files(run)
    assert sorted({name.split("/")[0] for name in shards}) == ["audio", "images"]
    assert any(n.startswith("audio/") and n.endswith(".tar") for n in shards)
    return run, shards


def test_every_node_run_alone_in_plan_order_writes_the_shards_of_one_full_run(full_run, tmp_path):
    _, reference = full_run
    run = tmp_path / "nodes"
    missing = cli("run", WORKFLOW, "--run-dir", str(run), *SITE, "--only", "align")
    assert missing.returncode == 3, missing.stderr[-2000:]
    assert "stage 'align': input 'pages' is not committed" in missing.stderr
    planned = cli("plan", WORKFLOW, "--run-dir", str(run), *SITE, "--json")
    assert planned.returncode == 0, planned.stderr
    nodes = json.loads(planned.stdout)["nodes"]
    assert [n["name"] for n in nodes] == ["pages", "list", "align", "pii", "image_text", "images", "audio_text",
                                          "audio"]
    for node in nodes:  # what an orchestrator's task per node runs
        assert node["command"][0] == "mmcurate"
        out = cli(*node["command"][1:])
        assert out.returncode == 0, f"{node['name']}: {out.stderr[-3000:]}"
        assert statuses(run)[node["name"]] == "ran"
    assert shard_files(run) == reference
    again = json.loads(cli("plan", WORKFLOW, "--run-dir", str(run), *SITE, "--json").stdout)["nodes"]
    assert {n["action"] for n in again} == {"reuse"}
    reused = cli(*nodes[-1]["command"][1:])
    assert reused.returncode == 0 and statuses(run)["audio"] == "reused"


def test_a_change_to_one_branch_re_runs_that_branch_only_with_no_http_request(full_run):
    run, reference = full_run
    images_generation = os.path.realpath(run / "images")
    before = requests(run)
    change = ["--set", "audio_text.where=modality = 'audio' AND audio_seconds >= 1.0"]
    plan = json.loads(cli("plan", WORKFLOW, "--run-dir", str(run), *SITE, *change, "--json").stdout)["nodes"]
    assert {n["name"]: n["action"] for n in plan} == {
        "pages": "reuse", "list": "reuse", "align": "reuse", "pii": "reuse", "image_text": "reuse", "images": "reuse",
        "audio_text": "run", "audio": "run"}
    assert {n["name"]: n["why"] for n in plan}["audio_text"] == "its config changed"
    out = cli("run", WORKFLOW, "--run-dir", str(run), *SITE, *change)
    assert out.returncode == 0, out.stderr[-3000:]
    assert statuses(run) == {"pages": "reused", "list": "reused", "align": "reused", "pii": "reused",
                             "image_text": "reused", "images": "reused", "audio_text": "ran", "audio": "ran"}
    assert requests(run) == before  # the demo server counted 0 HTTP requests
    assert os.path.realpath(run / "images") == images_generation
    shards = shard_files(run)
    assert {n: b for n, b in shards.items() if n.startswith("images/")} == \
        {n: b for n, b in reference.items() if n.startswith("images/")}
    stats = json.loads((run / "stats.json").read_text())
    assert stats["audio_text"]["in"] == stats["pii"]["kept"]
    assert stats["audio"]["in"] == stats["audio_text"]["kept"] <= stats["pii"]["kept"]


def test_on_the_purged_demo_plan_says_a_changed_align_re_crawls_and_only_align_refuses_touching_nothing(full_run):
    """The demo purges raw text (retain_raw_text: false): a changed align must read raw text, so plan says the
    crawls run again, and --only align, out of that order, exits 3 naming pages with every link as it was."""
    run, _ = full_run
    change = ["--set", "align.image_max_side=128"]
    plan = {n["name"]: n for n in json.loads(cli("plan", WORKFLOW, "--run-dir", str(run), *SITE, *change,
                                                 "--json").stdout)["nodes"]}
    assert {name: n["action"] for name, n in plan.items()} == dict.fromkeys(plan, "run")
    assert plan["pages"]["why"] == plan["list"]["why"] == \
        "its raw text was purged (retain_raw_text: false) and 'align', which must run, reads it"
    links = {name: os.readlink(run / name) for name in plan}
    out = cli("run", WORKFLOW, "--run-dir", str(run), *SITE, *change, "--only", "align")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "stage 'align': input 'pages' is due to run again (its raw text was purged" in out.stderr
    assert {name: os.readlink(run / name) for name in plan} == links
    assert all(json.loads((run / name / "_SUCCESS.json").read_text()).get("raw_text_purged")
               for name in ("pages", "list", "align"))
