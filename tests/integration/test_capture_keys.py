"""Several captures of the same URLs in one run (two WARCs of the site, plus a live crawl of it) give unique keys
and shards that webdataset reads without error."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WORKFLOW = """
name: captures
stages:
  - stage: crawl
    seeds: ["{base}/index.html"]
    warcs: ["{warc_a}", "{warc_b}"]
    max_depth: 2
    max_pages: 100
    fetch: {{timeout_s: 1, deadline_s: 3, max_bytes: 3000000, allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 64
  - stage: shard
    samples_per_shard: 50
"""


def capture_site(base_url: str, site_dir: Path, warc_path: Path) -> int:
    """Write a WARC holding a response record for every file of the served site (as a crawler archive would)."""
    from warcio.capture_http import capture_http

    paths = sorted(p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*") if p.is_file())
    with capture_http(str(warc_path)):
        for path in paths:
            try:
                urllib.request.urlopen(f"{base_url}/{path}", timeout=5).read()
            except OSError:  # 4xx/5xx answers are archived too; urllib raises on them
                pass
    return len(paths)


def test_two_warcs_and_a_live_crawl_of_one_site_give_unique_keys_and_readable_shards(ray_session, site, tmp_path):
    import webdataset as wds

    from mmcurate.pipeline.runner import run_workflow

    server, root = site
    warcs = [tmp_path / "a.warc.gz", tmp_path / "b.warc.gz"]
    for warc in warcs:
        assert capture_site(server.base_url, root / "site", warc) > 30
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(WORKFLOW.format(base=server.base_url, warc_a=warcs[0], warc_b=warcs[1]))
    run_workflow(workflow, tmp_path / "run")

    tars = sorted(str(p) for p in (tmp_path / "run" / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    meta = [json.loads(s["json"]) for s in samples]
    by_url: dict[str, set[str]] = {}
    for m in meta:
        by_url.setdefault(m["url"], set()).add(m["source"])
    # the same image reached the shards from the live crawl and from the archives, each capture its own sample
    assert any(sources >= {"page", "warc"} for sources in by_url.values())
    assert sum(1 for m in meta if m["source"] == "warc") >= 2 * sum(1 for m in meta if m["source"] == "page") > 0
