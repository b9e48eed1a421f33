"""A small demo site served on 127.0.0.1 and workflow files that crawl it, shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

WORKFLOW = """
name: itest
stages:
  - stage: crawl
    seeds: ["{base}/index.html"]
    url_lists: [{{path: "{url_list}", caption_column: caption}}]
    max_depth: 4
    max_pages: 100
    fetch: {{timeout_s: 1, deadline_s: 3, max_bytes: 3000000, allow_networks: ["127.0.0.0/8"]}}
  - stage: align
    image_max_side: 128
  - stage: shard
    samples_per_shard: 25
"""


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The seeded demo site (30 pages), served for the whole session; tests read its request counter."""
    from mmcurate.pipeline.demo.server import serve_site
    from mmcurate.pipeline.demo.site import build_site, write_url_list

    root = tmp_path_factory.mktemp("site")
    build_site(root, seed=3, pages=30)
    with serve_site(root, slow_seconds=3.0, huge_bytes=8 * 1024 * 1024) as server:
        write_url_list(root, server.base_url, root / "urls.csv")
        yield server, root


@pytest.fixture(scope="session")
def workflow_file(site, tmp_path_factory) -> Path:
    server, root = site
    path = tmp_path_factory.mktemp("wf") / "itest.yaml"
    path.write_text(WORKFLOW.format(base=server.base_url, url_list=root / "urls.csv"))
    return path


@pytest.fixture(scope="session")
def finished_run(ray_session, workflow_file, tmp_path_factory):
    """One uninterrupted run, the reference every other integration test compares against."""
    from mmcurate.pipeline.runner import run_workflow

    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    result = run_workflow(workflow_file, run_dir)
    return run_dir, result
