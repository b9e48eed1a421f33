"""End to end on a served demo site: accounting, shards readable by both loaders, resume, no repeated work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.integration


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "shards").iterdir())}


def test_every_stage_balances_and_every_reject_has_a_reason(finished_run):
    run_dir, result = finished_run
    stats = json.loads((run_dir / "stats.json").read_text())
    assert list(stats) == ["crawl", "align", "shard"]
    for stage, s in stats.items():
        assert s["kept"] + sum(s["rejected"].values()) == s["in"], stage
        rejects = pads.dataset(str(run_dir / "rejects" / stage)).to_table() if s["rejected"] else None
        if rejects is not None:
            rows = rejects.to_pylist()
            assert len(rows) == sum(s["rejected"].values())
            assert all(r["reason"] and r["stage"] == stage and r["config_hash"] for r in rows)
        kept_rows = pads.dataset(str(run_dir / stage / "data")).count_rows() if stage != "shard" else s["kept"]
        assert kept_rows == s["kept"]
    # what align saw is what crawl kept
    assert stats["align"]["in"] >= stats["crawl"]["kept"]
    assert stats["shard"]["in"] == stats["align"]["kept"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ran", "ran", "ran"]
    assert manifest["workflow"]["sha256"] and manifest["versions"]["ray"]


def test_bad_input_becomes_reason_rows(finished_run):
    run_dir, _ = finished_run
    crawl = json.loads((run_dir / "stats.json").read_text())["crawl"]["rejected"]
    align = json.loads((run_dir / "stats.json").read_text())["align"]["rejected"]
    for reason in ("http_error", "robots_disallowed", "x_robots_noai", "address_not_allowed", "too_many_redirects",
                   "timeout", "body_too_large", "not_utf8"):
        assert crawl.get(reason, 0) > 0, (reason, crawl)
    for reason in ("image_corrupt", "image_too_large", "subtitle_malformed", "audio_corrupt", "junk_text"):
        assert align.get(reason, 0) > 0, (reason, align)


def test_shards_read_back_with_webdataset_and_datasets(finished_run):
    import datasets
    import webdataset as wds

    run_dir, result = finished_run
    tars = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == result.stats["shard"]["kept"]
    image_text = [s for s in samples if "jpg" in s and s["txt"]]
    audio_text = [s for s in samples if "flac" in s and s["txt"]]
    assert image_text and audio_text
    assert all(max(s["jpg"].size) <= 128 for s in image_text)
    assert [s["__key__"] for s in samples] == sorted(s["__key__"] for s in samples)

    features = datasets.Features({
        "__key__": datasets.Value("string"), "__url__": datasets.Value("string"),
        "jpg": datasets.Value("binary"), "flac": datasets.Value("binary"),
        "txt": datasets.Value("string"), "json": {
            "key": datasets.Value("string"), "text_source": datasets.Value("string")},
    })
    loaded = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", features=features)
    assert len(loaded) == len(samples)
    assert sum(1 for row in loaded if row["flac"]) == len(audio_text)


def test_second_run_on_finished_dir_makes_no_http_request(finished_run, site, workflow_file):
    from mmcurate.pipeline.runner import run_workflow

    run_dir, _ = finished_run
    server, _ = site
    before, shards = server.request_count, shard_bytes(run_dir)
    result = run_workflow(workflow_file, run_dir)
    assert server.request_count == before
    assert [s.status for s in result.stages] == ["reused", "reused", "reused"]
    assert shard_bytes(run_dir) == shards


def test_changing_align_reruns_align_and_shard_not_crawl(finished_run, site, workflow_file, tmp_path):
    import webdataset as wds

    from mmcurate.pipeline.runner import run_workflow

    run_dir = tmp_path / "changed"
    shutil.copytree(finished_run[0], run_dir)
    server, _ = site
    before = server.request_count
    result = run_workflow(workflow_file, run_dir, overrides=["align.image_max_side=48"])
    assert [s.status for s in result.stages] == ["reused", "ran", "ran"]
    assert server.request_count == before
    images = [s["jpg"] for s in wds.WebDataset(sorted(str(p) for p in (run_dir / "shards").glob("*.tar")),
                                              shardshuffle=False).decode("pil") if "jpg" in s]
    assert images and all(max(im.size) <= 48 for im in images)


def _cli(workflow: Path, run_dir: Path, address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mmcurate.pipeline.cli", "run", str(workflow), "--run-dir", str(run_dir), "--ray-address", address],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if "logging_progress" not in line]
    return "\n".join(lines[-60:])


def _wait_for(condition, proc: subprocess.Popen, log: Path, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert proc.poll() is None, f"the run ended before the kill point:\n{_tail(log)}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)


@pytest.mark.parametrize("kill_point", ["mid-crawl", "mid-align", "mid-shard"])
def test_sigkill_then_rerun_gives_identical_shards(finished_run, workflow_file, tmp_path, ray_session, site, kill_point):
    reference_dir, _ = finished_run
    address = ray_session.get_runtime_context().gcs_address
    run_dir, log = tmp_path / "killed", tmp_path / "cli.log"
    proc = _cli(workflow_file, run_dir, address, log)
    if kill_point == "mid-crawl":
        _wait_for(lambda: any(run_dir.glob(".progress/crawl-*/pages/level-001.parquet")), proc, log)
    elif kill_point == "mid-align":
        _wait_for(lambda: (run_dir / "crawl" / "_SUCCESS.json").exists() and any(run_dir.glob(".work/align-*")), proc, log)
    else:
        _wait_for(lambda: (run_dir / "align" / "_SUCCESS.json").exists() and any(run_dir.glob(".work/shard-*")), proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "shards").exists()
    server, _ = site
    index_requests, all_requests = server.requests_for("/index.html"), server.request_count
    resumed = _cli(workflow_file, run_dir, address, log)
    assert resumed.wait(timeout=600) == 0, _tail(log)
    # work finished before the kill is not done again: the BFS levels already fetched are replayed
    assert server.requests_for("/index.html") == index_requests
    if kill_point != "mid-crawl":
        assert server.request_count == all_requests
    assert not (run_dir / ".progress").exists() or not any((run_dir / ".progress").iterdir())
    assert shard_bytes(run_dir) == shard_bytes(reference_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = {"mid-crawl": ["ran", "ran", "ran"], "mid-align": ["reused", "ran", "ran"],
                "mid-shard": ["reused", "reused", "ran"]}[kill_point]
    assert [s["status"] for s in manifest["stages"]] == expected


def test_explain_traces_a_clip_to_its_recording_and_a_reject_to_its_reason(finished_run):
    from mmcurate.pipeline.explain import format_history, history

    run_dir, _ = finished_run
    index = pads.dataset(sorted(str(p) for p in (run_dir / "shards").glob("*.parquet"))).to_table().to_pylist()
    with_image = {r["key"] for r in index if r["member"].endswith((".jpg", ".png"))}
    clip_key = next(r["key"] for r in index if r["member"].endswith(".flac") and r["key"] not in with_image)
    events = history(run_dir, clip_key)
    stages = [e["stage"] for e in events]
    assert stages[0] == "crawl" and "align" in stages and "shards" in stages
    assert events[0]["key"] != clip_key  # the recording the clip was cut from
    assert any(e["stage"] == "align" and e["key"] == clip_key and e["parent"] == events[0]["key"] for e in events)
    reject = pads.dataset(str(run_dir / "rejects" / "align")).to_table().to_pylist()[0]
    text = format_history(reject["key"], history(run_dir, reject["key"]))
    assert f"rejected {reject['key']}" in text and reject["reason"] in text
