"""End to end on a served demo site: accounting, shards readable by both loaders, resume, no repeated work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.integration


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "shards").iterdir())}


def _keys(path: Path) -> list[str]:
    return pads.dataset(str(path), format="parquet").to_table(columns=["key"])["key"].to_pylist()


def test_every_record_that_entered_a_stage_is_accounted_for_by_what_it_wrote(finished_run):
    """Counted from the files each stage wrote, not from the stage's own stats."""
    run_dir, _ = finished_run
    stats = json.loads((run_dir / "stats.json").read_text())
    assert list(stats) == ["crawl", "align", "shard"]
    crawl_kept, crawl_rejected = _keys(run_dir / "crawl" / "data"), _keys(run_dir / "rejects" / "crawl")
    align_kept = pads.dataset(str(run_dir / "align" / "data")).to_table(columns=["key", "parent"]).to_pylist()
    align_rejected = pads.dataset(str(run_dir / "rejects" / "align")).to_table(columns=["key", "parent"]).to_pylist()
    # crawl: every candidate once, kept or rejected
    assert len(set(crawl_kept) | set(crawl_rejected)) == len(crawl_kept) + len(crawl_rejected) == stats["crawl"]["in"]
    # align: every record crawl kept has an outcome of its own or, cut into clips, outcomes that name it as parent
    crawl_kept_set = set(crawl_kept)
    origins = {row["key"] if row["key"] in crawl_kept_set else row["parent"] for row in align_kept + align_rejected}
    assert origins == crawl_kept_set
    assert stats["align"]["in"] == len(crawl_kept)
    assert stats["align"]["out"] == len(align_kept) + len(align_rejected) >= stats["align"]["in"]
    # shard: every record align kept is a sample in a tar or a reject row
    index = pads.dataset(sorted(str(p) for p in (run_dir / "shards").glob("*.parquet"))).to_table(columns=["key"])
    written = set(index["key"].to_pylist())
    shard_rejected = _keys(run_dir / "rejects" / "shard") if stats["shard"]["rejected"] else []
    assert written | set(shard_rejected) == {row["key"] for row in align_kept}
    assert len(written) + len(shard_rejected) == len(align_kept) == stats["shard"]["in"]
    for stage in stats:
        rows = pads.dataset(str(run_dir / "rejects" / stage)).to_table().to_pylist() if stats[stage]["rejected"] else []
        assert len(rows) == sum(stats[stage]["rejected"].values())
        assert all(r["reason"] and r["stage"] == stage and r["config_hash"] for r in rows)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ran", "ran", "ran"]
    assert manifest["workflow"]["sha256"] and manifest["versions"]["ray"]
    assert set(manifest["stages"][0]["covers"]) == {"kind", "code", "upstream", "files", "serve"}


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
    shutil.copytree(finished_run[0], run_dir, symlinks=True)
    server, _ = site
    before = server.request_count
    result = run_workflow(workflow_file, run_dir, overrides=["align.image_max_side=48"])
    assert [s.status for s in result.stages] == ["reused", "ran", "ran"]
    assert server.request_count == before
    images = [s["jpg"] for s in wds.WebDataset(sorted(str(p) for p in (run_dir / "shards").glob("*.tar")),
                                              shardshuffle=False).decode("pil") if "jpg" in s]
    assert images and all(max(im.size) <= 48 for im in images)


URL_LIST_ONLY = """
name: url-list-only
stages:
  - stage: crawl
    url_lists: [{{path: "{url_list}", caption_column: caption}}]
    fetch: {{timeout_s: 1, deadline_s: 3, max_bytes: 3000000, allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 64
  - stage: shard
"""


def test_new_bytes_in_a_url_list_at_the_same_path_rerun_the_crawl_and_all_after_it(ray_session, site, tmp_path):
    from mmcurate.pipeline.runner import run_workflow

    server, root = site
    url_list = tmp_path / "urls.csv"
    lines = (root / "urls.csv").read_text().splitlines()
    url_list.write_text("\n".join(lines[:6]) + "\n")
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(URL_LIST_ONLY.format(url_list=url_list))
    first = run_workflow(workflow, tmp_path / "run")
    assert first.stats["crawl"]["in"] == 5
    url_list.write_text("\n".join(lines[:4]) + "\n")  # same path, fewer rows
    second = run_workflow(workflow, tmp_path / "run")
    assert [s.status for s in second.stages] == ["ran", "ran", "ran"]
    assert second.stats["crawl"]["in"] == 3
    before = server.request_count
    third = run_workflow(workflow, tmp_path / "run")
    assert [s.status for s in third.stages] == ["reused", "reused", "reused"]
    assert server.request_count == before


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


def test_an_empty_list_is_a_clean_cli_error_not_a_traceback(ray_session, tmp_path, capsys):
    from mmcurate.pipeline.cli import main

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\n")  # a header and no row
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: empty\nstages:\n  - stage: crawl\n    url_lists: [{{path: \"{urls}\"}}]\n"
                        "  - stage: align\n  - stage: shard\n")
    assert main(["run", str(workflow), "--run-dir", str(tmp_path / "run")]) == 2
    assert "crawl found no candidates" in capsys.readouterr().err
