"""The pieces of a BFS level as plain callables (no Ray, no network): frontier order, parts, links, candidates.

``crawl_pages`` runs these in Ray workers; here they run in the test process on files in a temp directory, with
the HTTP fetch stubbed, so each guarantee is checked without a cluster.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.crawl import pages
from mmcurate.stages.crawl.pages import (
    LINKS,
    PAGE_SCHEMA,
    Frontier,
    LevelFetcher,
    LevelPlan,
    _next_frontier_bucket,
    _order_key,
    _seed_frontier,
    bucket_of,
    frontier_buckets,
    level_candidates,
)

SITE = "http://site.test"


def read_frontier(frontier: Frontier) -> list[str]:
    return [u for b, n in enumerate(frontier.counts) if n for u in pq.read_table(frontier.file(b))["url"].to_pylist()]


def test_a_frontier_is_in_digest_order_whatever_the_number_of_buckets(tmp_path):
    urls = [f"{SITE}/page{i}.html" for i in range(300)]
    expected = sorted(urls, key=_order_key)
    for buckets in (1, 3, 16):
        frontier = _seed_frontier((*urls, *urls[:50]), tmp_path / f"k{buckets}", buckets)  # repeats are one URL
        assert len(frontier.counts) == buckets and frontier.size == 300
        assert read_frontier(frontier) == expected
        if buckets > 1:
            assert all(0 < n < 300 for n in frontier.counts)  # the digest spreads URLs over every bucket
    assert [bucket_of(u, 16) for u in expected] == sorted(bucket_of(u, 16) for u in urls)


def test_a_frontier_key_names_its_urls_and_the_slice_fetched(tmp_path):
    one = _seed_frontier((f"{SITE}/a", f"{SITE}/b"), tmp_path / "one", 1)
    same = _seed_frontier((f"{SITE}/b", f"{SITE}/a"), tmp_path / "same", 1)
    other = _seed_frontier((f"{SITE}/a", f"{SITE}/c"), tmp_path / "other", 1)
    assert one.key(2) == same.key(2) != other.key(2)
    assert one.key(1) != one.key(2) and one.key(2, "cut", "why") != one.key(2)
    assert one.digests[0] == hashlib.sha256("\n".join(read_frontier(one)).encode()).hexdigest()


def test_buckets_follow_max_pages():
    assert frontier_buckets(CrawlConfig(seeds=(SITE,), max_pages=1000)) == 1
    assert frontier_buckets(CrawlConfig(seeds=(SITE,), max_pages=pages.PAGES_PER_BUCKET + 1)) == 2
    assert frontier_buckets(CrawlConfig(seeds=(SITE,), max_pages=10**9)) == pages.MAX_BUCKETS


def test_parts_cover_the_fetched_slice_once_in_frontier_order():
    frontier = Frontier(Path("."), counts=(5, 4, 3), digests=("", "", ""))
    assert frontier.quotas(7) == (5, 2, 0) and frontier.quotas(100) == (5, 4, 3) and frontier.quotas(0) == (0, 0, 0)
    plan = LevelPlan(depth=1, directory=".", bucket_files=("a", "b", "c"), quotas=(5, 0, 3), part_rows=2, buckets=3)
    assert plan.parts == 5
    assert [plan.part(i) for i in range(plan.parts)] == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (2, 0, 2), (2, 2, 3)]


def links_page(url: str) -> bytes:
    """Every page links the hub (twice), the index, a page of its own, and a page on another host."""
    name = url.rsplit("/", 1)[1].removesuffix(".html")
    links = ["/hub.html", "/hub.html", "/index.html", f"/{name}-child.html", "http://elsewhere.test/x.html"]
    return ("<html><body>" + "".join(f'<a href="{h}">x</a>' for h in links) + "</body></html>").encode()


def fetch_level(tmp_path: Path, seeds: tuple[str, ...], buckets: int, part_rows: int) -> tuple[Path, Frontier]:
    """Fetch a level from the seeds with LevelFetcher called directly (the HTTP fetch stubbed), as the actor
    pool would, part by part."""
    config = CrawlConfig(seeds=seeds)
    frontier = _seed_frontier(seeds, tmp_path / "frontier-0", buckets)
    level = tmp_path / "level-000.parquet"
    (level / LINKS).mkdir(parents=True)
    plan = LevelPlan(depth=0, directory=str(level), bucket_files=tuple(str(frontier.file(b)) for b in range(buckets)),
                     quotas=frontier.quotas(frontier.size), part_rows=part_rows, buckets=buckets)
    fetcher = LevelFetcher(config, plan)
    fetcher.fetcher.fetch = lambda url, accept=(): SimpleNamespace(body=links_page(url), url=url,
                                                                   content_type="text/html")
    counters = fetcher(pa.table({"id": list(range(plan.parts))}))
    assert counters["pages"].to_pylist() == [stop - start for _, start, stop in map(plan.part, range(plan.parts))]
    assert sum(counters["pages"].to_pylist()) == frontier.size and sum(counters["failed"].to_pylist()) == 0
    return level, frontier


def test_the_next_frontier_is_the_new_distinct_links_on_the_crawls_hosts_in_frontier_order(tmp_path):
    seeds = tuple(f"{SITE}/p{i}.html" for i in range(7)) + (f"{SITE}/hub.html",)
    level, frontier = fetch_level(tmp_path, seeds, buckets=2, part_rows=3)
    fetched = [r["url"] for f in sorted(level.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert fetched == sorted(seeds, key=_order_key)  # the parts, by name, are the frontier in order
    new = []
    for bucket in range(2):
        out = tmp_path / f"next-{bucket}.parquet"
        seen = [str(frontier.file(bucket))] if frontier.counts[bucket] else []
        count, digest = _next_frontier_bucket(str(level / LINKS), seen, str(out), bucket)
        urls = pq.read_table(out)["url"].to_pylist() if count else []
        assert count == len(urls) and digest == hashlib.sha256("\n".join(urls).encode()).hexdigest()
        assert all(bucket_of(u, 2) == bucket for u in urls)
        new += urls
    # the hub, linked 16 times and already in this frontier, is not new; the index is, once; other hosts never
    expected = [f"{SITE}/index.html", f"{SITE}/hub-child.html", *(f"{SITE}/p{i}-child.html" for i in range(7))]
    assert new == sorted(expected, key=_order_key)


def page_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        refs = json.dumps([{"position": p, "image_url": f"{SITE}/img{i}-{p}.png"} for p in range(i % 3 + 1)])
        failed = i % 4 == 3
        rows.append({"url": f"{SITE}/p{i}.html", "depth": 1, "final_url": None if failed else f"{SITE}/p{i}.html",
                     "reason": "http_error" if failed else None, "detail": "404" if failed else None,
                     "noai": False, "noimageai": False, "links": [], "refs": "[]" if failed else refs})
    return rows


def test_a_level_directory_gives_the_chunks_one_file_of_its_pages_gives(tmp_path):
    """Chunks run across part boundaries: the parts of a level are one sequence of pages, whatever their split."""
    rows = page_rows(10)
    one = tmp_path / "one" / "level-001.parquet"
    one.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=PAGE_SCHEMA), one)
    split = tmp_path / "split" / "level-001.parquet"
    split.mkdir(parents=True)
    for i, (start, stop) in enumerate([(0, 3), (3, 4), (4, 10)]):
        pq.write_table(pa.Table.from_pylist(rows[start:stop], schema=PAGE_SCHEMA), split / f"part-{i:06d}.parquet")
    results = {}
    for name, level in (("one", one), ("split", split)):
        fetch, refused = tmp_path / name / "fetch", tmp_path / name / "refused"
        fetch.mkdir()
        refused.mkdir()
        counts = level_candidates(level, fetch, refused, chunk_rows=6)
        chunks = {f.name: pq.read_table(f) for f in sorted(fetch.glob("*.parquet"))}
        results[name] = (counts, chunks, pq.read_table(refused / "level-001.parquet"))
    (counts, chunks, refused), other = results["one"], results["split"]
    assert counts == other[0] == (sum(i % 3 + 1 for i in range(10) if i % 4 != 3), 2)
    assert list(chunks) == list(other[1]) == [f"level-001-{i:04d}.parquet" for i in range(3)]
    assert [t.num_rows for t in chunks.values()] == [6, 6, 4]
    assert all(chunks[name].equals(other[1][name]) for name in chunks)
    assert refused.equals(other[2]) and refused.num_rows == 2
