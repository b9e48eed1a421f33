"""The BFS crawl on Ray against a served site (127.0.0.1): every discovered page is fetched once, the level files are
the same on every run, max_pages cuts in frontier order, a saved level is replayed only for its own frontier.

The site: the index links four articles and a hub; every article links the hub (twice), the index, a page of its
own and a page on another host; those pages link the hub, one shared leaf and the first article; the leaf links
the index and the hub. Each page holds one image. Fetched at depth 0: the index; 1: the articles and the hub;
2: the article pages; 3: the leaf.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from mmcurate.schemas.record import REASON_COLUMN
from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig
from mmcurate.stages.crawl import pages
from mmcurate.stages.crawl.pages import _order_key, candidates_from_pages, crawl_pages

pytestmark = pytest.mark.integration

HTML = [("Content-Type", "text/html")]
ARTICLES = [f"/a{i}.html" for i in range(1, 5)]
CHILDREN = [f"/b{i}.html" for i in range(1, 5)]
LINKS = {
    "/index.html": [*ARTICLES, "/hub.html"],
    **{a: ["/hub.html", "/hub.html", "/index.html", b, "http://elsewhere.test/x.html"]
       for a, b in zip(ARTICLES, CHILDREN, strict=True)},
    **{b: ["/hub.html", "/leaf.html", "/a1.html"] for b in CHILDREN},
    "/hub.html": ["/index.html"],
    "/leaf.html": ["/index.html", "/hub.html"],
}
DEPTH = {"/index.html": 0, **dict.fromkeys([*ARTICLES, "/hub.html"], 1), **dict.fromkeys(CHILDREN, 2), "/leaf.html": 3}


@pytest.fixture
def site(local_server):
    for path, links in LINKS.items():
        body = "".join(f'<a href="{link}">{link}</a>' for link in links) + f'<img src="/img{path[:-5]}.png" alt="x">'
        local_server.route(path, body=f"<html><body>{body}</body></html>".encode(), headers=HTML)
    return local_server


def config(server, **crawl) -> CrawlConfig:
    defaults = {"max_depth": 6, "max_pages": 100, "batch_size": 2, "concurrency": 2}  # several parts per level
    return CrawlConfig(seeds=(server.url("/index.html"),), fetch=FetchConfig(allow_networks=("127.0.0.0/8",)),
                       **{**defaults, **crawl})


def page_requests(server, since: int = 0) -> collections.Counter:
    return collections.Counter(p for p in server.requests[since:] if p != "/robots.txt")


def page_rows(pages_dir: Path) -> list[dict]:
    """Every page row, as a plain pyarrow dataset over pages_dir reads them (files in name order)."""
    return pads.dataset(pages_dir, format="parquet").to_table().to_pylist()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_page_linked_from_many_pages_and_levels_is_fetched_once_and_two_crawls_write_the_same_files(
    ray_session, site, tmp_path, monkeypatch
):
    assert crawl_pages(config(site), tmp_path / "one") == len(LINKS)
    assert page_requests(site) == collections.Counter(dict.fromkeys(LINKS, 1))  # the hub: linked 14 times
    rows = page_rows(tmp_path / "one")
    assert {r["url"]: r["depth"] for r in rows} == {site.url(p): d for p, d in DEPTH.items()}
    assert len(rows) == len(LINKS) and all(r["reason"] is None for r in rows)  # no other host, nothing cut
    for depth in range(4):  # each level in frontier order: by sha256 of the URL
        urls = [r["url"] for r in rows if r["depth"] == depth]
        assert urls == sorted(urls, key=_order_key)
    levels = [f"level-{d:03d}.parquet" for d in range(4)]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["_links", *levels]
    assert sorted(p.name for p in (tmp_path / "one" / "_links").iterdir()) == levels
    assert ray_session.data.read_parquet(str(tmp_path / "one")).count() == len(LINKS)  # Ray reads the page rows too
    assert len(list((tmp_path / "one" / "level-001.parquet").glob("part-*.parquet"))) > 1

    seen = len(site.requests)
    assert crawl_pages(config(site), tmp_path / "two") == len(LINKS)
    assert page_requests(site, seen) == collections.Counter(dict.fromkeys(LINKS, 1))
    assert files(tmp_path / "two") == files(tmp_path / "one")  # byte for byte, whatever order Ray ran the parts in

    monkeypatch.setattr(pages, "frontier_buckets", lambda cfg: 3)  # the digest split into 3 ranges
    assert crawl_pages(config(site), tmp_path / "three") == len(LINKS)
    assert page_rows(tmp_path / "three") == rows  # other part files, the same pages in the same order
    assert len(pq.read_table(tmp_path / "three" / "level-001.parquet")) == 5


def test_max_pages_cuts_the_frontier_in_order_and_every_page_gets_one_outcome(ray_session, site, tmp_path):
    pages_dir = tmp_path / "pages"
    assert crawl_pages(config(site, max_pages=7), pages_dir) == 7  # the index, five at depth 1, one at depth 2
    by_digest = sorted((site.url(b) for b in CHILDREN), key=_order_key)
    assert set(page_requests(site)) == {"/index.html", *ARTICLES, "/hub.html", by_digest[0].split(str(site.port))[1]}
    cut = pq.read_table(pages_dir / "level-002-cut.parquet").to_pylist()
    assert [r["url"] for r in cut] == by_digest[1:]
    assert {(r["reason"], r["detail"]) for r in cut} == {("crawl_limit", "max_pages 7 reached")}
    # the one page fetched at depth 2 links the leaf (new), the hub and an article (seen): the leaf is cut next
    leaf_cut = pq.read_table(pages_dir / "level-003-cut.parquet").to_pylist()
    assert [r["url"] for r in leaf_cut] == [site.url("/leaf.html")]

    fetch_dir, refused_dir = tmp_path / "fetch", tmp_path / "refused"
    media, failed = candidates_from_pages(pages_dir, fetch_dir, refused_dir, chunk_rows=3)
    assert (media, failed) == (7, 4)  # one image per fetched page; four pages cut
    to_fetch = [r for f in sorted(fetch_dir.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    refused = [r for f in sorted(refused_dir.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(f.name for f in fetch_dir.glob("*.parquet")) == [
        "level-000-0000.parquet", "level-001-0000.parquet", "level-001-0001.parquet", "level-002-0000.parquet"
    ]  # fmt: skip
    assert all(pq.read_metadata(f).num_rows <= 3 for f in fetch_dir.glob("*.parquet"))
    readable = [r["url"] for r in page_rows(pages_dir) if r["reason"] is None]
    assert sorted(r["page_url"] for r in to_fetch) == sorted(readable)
    assert sorted(r["url"] for r in refused) == sorted([*by_digest[1:], site.url("/leaf.html")])
    assert {r[REASON_COLUMN] for r in refused} == {"crawl_limit"}
    keys = [r["key"] for r in to_fetch + refused]
    assert len(keys) == len(set(keys)) == 7 + 4


def test_a_saved_level_is_replayed_only_for_the_frontier_it_was_fetched_from(ray_session, site, tmp_path):
    pages_dir = tmp_path / "pages"
    crawl_pages(config(site), pages_dir)
    before = files(pages_dir)
    (pages_dir / "level-002.parquet" / pages.FRONTIER_MARKER).write_text("another frontier")
    (pages_dir / "level-009.parquet").mkdir()  # a level this crawl does not reach
    (pages_dir / ".level-003.parquet.tmp").mkdir()  # a level being written when a run was killed
    seen = len(site.requests)
    assert crawl_pages(config(site), pages_dir) == len(LINKS)
    assert page_requests(site, seen) == collections.Counter(dict.fromkeys(CHILDREN, 1))  # depth 2 only
    assert files(pages_dir) == before
