"""A stage's fingerprint follows content: config as resolved, code, input file bytes, upstream."""

from __future__ import annotations

import os

from mmcurate.pipeline.fingerprint import FileDigests, code_version, stage_fingerprint
from mmcurate.schemas.stage_configs import AlignConfig, CrawlConfig, UrlListInput


def crawl(path) -> CrawlConfig:
    return CrawlConfig(url_lists=(UrlListInput(path=str(path)),))


def fp(config, files, upstream=(), serve=None, kind="crawl") -> str:
    return stage_fingerprint(kind=kind, config=config, upstream=list(upstream), files=files, serve=serve)[0]


def test_changing_the_bytes_of_an_input_file_at_the_same_path_changes_the_fingerprint(tmp_path):
    urls = tmp_path / "urls.csv"
    urls.write_text("url\nhttp://a/1.jpg\n")
    files = FileDigests(tmp_path / "cache.json")
    before = fp(crawl(urls), files)
    assert fp(crawl(urls), files) == before
    urls.write_text("url\nhttp://a/2.jpg\n")
    assert fp(crawl(urls), files) != before


def test_file_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    urls = tmp_path / "urls.csv"
    urls.write_text("url\nhttp://a/1.jpg\n")
    first = FileDigests(tmp_path / "cache.json")
    digest = first.digest(str(urls))
    first.save()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert FileDigests(tmp_path / "cache.json").digest(str(urls)) == digest
    assert str(urls) not in map(str, reads)  # a no-op re-run does not re-read a big input
    monkeypatch.undo()
    os.utime(urls, ns=(1, 1))  # same size, new mtime: read again
    assert FileDigests(tmp_path / "cache.json").digest(str(urls)) == digest


def test_upstream_serve_section_and_config_all_count(tmp_path):
    files = FileDigests(tmp_path / "cache.json")
    base = fp(AlignConfig(), files, upstream=["u1"], kind="align")
    assert fp(AlignConfig(), files, upstream=["u2"], kind="align") != base
    assert fp(AlignConfig(image_max_side=64), files, upstream=["u1"], kind="align") != base
    assert fp(AlignConfig(image_max_side=512), files, upstream=["u1"], kind="align") == base  # 512 is the default
    seeds = CrawlConfig(seeds=("http://127.0.0.1:1/",))
    assert fp(seeds, files, serve={"demo_site": {"seed": 0}}) != fp(seeds, files, serve={"demo_site": {"seed": 1}})


def test_code_version_covers_the_stage_package_and_differs_between_kinds():
    assert code_version("crawl") != code_version("align") != code_version("shard")
    assert code_version("crawl") == code_version("crawl")
