"""Breadth-first page crawl on Ray: the frontier, the seen set and every page row live in parquet files written by
Ray workers; the driver names files and adds up counters, so its memory does not grow with the crawl.

``pages_dir`` after a crawl (a plain ``pyarrow.dataset`` over it reads every page row, fetched and cut: it skips
names that start with ``_`` or ``.``)::

    level-000.parquet/                 one BFS level, a directory (PAGE_SCHEMA rows, in frontier order):
        part-000000.parquet ...          the pages of one fetch call each, numbered in frontier order
        _FRONTIER                        the key of the frontier slice the level was fetched from
    level-003-cut.parquet/             pages discovered but not fetched (reason crawl_limit), in frontier order
    _links/level-000.parquet/part-000000.parquet ...  each part's links on the crawl's hosts (distinct, one row
                                              group per frontier bucket): what the next frontier is built from
    _frontier/level-001/bucket-0000.parquet   while crawling: the URLs first seen at depth 1 (the seen set is the
                                              union of these files; removed when the crawl ends)

``ray.data.read_parquet(pages_dir)`` reads the same rows (it skips top-level names starting with ``_`` or ``.``
and files not named ``*.parquet``).

How a level goes (``crawl_pages``):

* The frontier of depth d+1 is the distinct links of level d on the crawl's hosts (``address.host_allowed`` with
  ``crawl_domains``) minus every URL of the frontiers of depths 0..d. Links are split by sha256 of the URL into
  ``frontier_buckets(config)`` ranges; one Ray task per bucket reads that bucket's links from the level's
  ``_links`` files and that bucket of the earlier frontiers, and writes the bucket's new URLs sorted by
  (sha256(URL), URL). A bucket is a range of the digest, so bucket 0 then bucket 1 ... is the frontier sorted by
  digest whatever the number of buckets: the order of a frontier depends on its URLs only, never on scheduling.
* ``max_pages`` fetches the first pages of the frontier in that order and cuts the rest (``level-*-cut``); a cut is
  therefore a deterministic, evenly spread sample of the discovered pages (before this, it kept the pages linked
  first). ``max_depth`` cuts the whole frontier past it. A cut page is a crawl_limit row, counted, not vanished.
* A level is fetched by ``LevelFetcher`` actors (``on_actors``), one part of the frontier per call; each
  writes its part's page rows and links and returns three numbers (pages, failed, media references). The level
  is written into a hidden directory and renamed into place once every part is there.
* Resume: a level (or cut) directory left by a killed run is reused only if its ``_FRONTIER`` key is this run's:
  the key is a digest of the frontier (per-bucket URL digests computed by the workers that wrote the buckets)
  and of how many of its pages the level holds. Frontiers are rebuilt on every run from the saved levels, which
  costs no HTTP request.

``candidates_from_pages`` is one Ray Data map over the levels: each task streams one level's pages into
candidate chunks and refused outcome rows (``level_candidates``, also a plain function for tests without Ray).
A page that cannot be read becomes a reject row; a page that can contributes one outcome per media reference (a
candidate to fetch, or a reject row: opt-out, repeated media, past ``max_refs_per_page``; see
``page_ref_outcomes``) and no row of its own.

Proof: ``tests/crawl/test_page_frontier.py`` (a served site: a page linked from every level is fetched once, two
crawls write byte-identical files, 1 or 3 buckets give the same pages in the same order, the max_pages cut, one
outcome per page, the resume rule), ``tests/unit/test_frontier.py`` (the pieces without Ray), and
``tests/bench/bench_crawl_memory.py`` (driver peak RSS at 50, 200, 800 pages: 228.2, 228.0, 229.0 MiB, of which the
crawl 2.8, 2.7, 3.5; it was 233.6, 243.7, 265.4 MiB, the crawl 5.8, 15.5, 37.6, when the driver held the levels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import OUTCOME_SCHEMA, RECORD_SCHEMA, empty_record, outcome_table, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import internal_error_detail, on_actors, rejected
from mmcurate.stages.files import atomic_write_bytes, atomic_write_parquet, fsync_dir

log = logging.getLogger("mmcurate.crawl")

_DEFAULT_MAX_REFS: int = CrawlConfig.model_fields["max_refs_per_page"].default
FRONTIER_MARKER = "_FRONTIER"  # in a level or cut directory: the key of the frontier slice it holds
FRONTIERS = "_frontier"  # under pages_dir, while crawling
LINKS = "_links"  # under pages_dir: one directory per level, published just before the level
PAGES_PER_BUCKET = 20_000  # of max_pages: a frontier bucket task holds about this many pages' links
MAX_BUCKETS = 256
FRONTIER_ROW_GROUP = 4096  # URLs per row group of a frontier bucket file: a part reads one or two of them
PAGE_BATCH = 256  # pages parsed at a time when turning a level into candidates
REFUSED_BATCH = 4096  # outcome rows buffered before they are written
MAX_PARTS = 1024  # parts of one level at most: Ray Data plans one task per part, on the driver

PAGE_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("depth", pa.int32()),
        pa.field("final_url", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("noai", pa.bool_()),
        pa.field("noimageai", pa.bool_()),
        pa.field("links", pa.list_(pa.string())),
        pa.field("refs", pa.string()),  # JSON list of MediaRef dicts
    ]
)
FRONTIER_SCHEMA = pa.schema([pa.field("url", pa.string())])
LINK_SCHEMA = pa.schema([pa.field("bucket", pa.int32()), pa.field("url", pa.string())])
COUNTER_SCHEMA = pa.schema([pa.field(name, pa.int64()) for name in ("pages", "failed", "refs")])


# ------------------------------------------------------------------------------------------------ frontier order


def frontier_buckets(config: CrawlConfig) -> int:
    """How many digest ranges a frontier is split into: a performance setting only, since the order of a frontier
    is the same for any number of buckets."""
    return max(1, min(MAX_BUCKETS, -(-config.max_pages // PAGES_PER_BUCKET)))


def _order_key(url: str) -> tuple[bytes, str]:
    return hashlib.sha256(url.encode("utf-8")).digest(), url


def bucket_of(url: str, buckets: int) -> int:
    """The digest range ``url`` falls in: buckets in ascending order hold ascending digests."""
    return (int.from_bytes(hashlib.sha256(url.encode("utf-8")).digest()[:8], "big") * buckets) >> 64


def _bucket_file(directory: Path, bucket: int) -> Path:
    return directory / f"bucket-{bucket:04d}.parquet"


@dataclass(frozen=True)
class Frontier:
    """One depth's frontier on disk: per bucket, how many URLs its file holds and their digest. Never the URLs."""

    directory: Path
    counts: tuple[int, ...]
    digests: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(self.counts)

    def file(self, bucket: int) -> Path:
        return _bucket_file(self.directory, bucket)

    def key(self, pages: int, *extra: str) -> str:
        """What a level fetched from the first ``pages`` URLs of this frontier is reused by."""
        lines = [f"{b}:{n}:{d}" for b, (n, d) in enumerate(zip(self.counts, self.digests, strict=True)) if n]
        return hashlib.sha256("\n".join([*lines, f"pages:{pages}", *extra]).encode()).hexdigest()

    def quotas(self, pages: int) -> tuple[int, ...]:
        """Per bucket, how many of its URLs are among the first ``pages`` of the frontier."""
        out, left = [], pages
        for count in self.counts:
            out.append(min(count, left))
            left -= out[-1]
        return tuple(out)


def _write_frontier_bucket(urls: list[str], path: Path) -> tuple[int, str]:
    """Write one bucket's URLs (already in frontier order); return (count, digest)."""
    digest = hashlib.sha256("\n".join(urls).encode("utf-8")).hexdigest()
    if urls:
        pq.write_table(pa.table({"url": pa.array(urls, pa.string())}, schema=FRONTIER_SCHEMA), path,
                       row_group_size=FRONTIER_ROW_GROUP)
    return len(urls), digest


def _seed_frontier(seeds: tuple[str, ...], directory: Path, buckets: int) -> Frontier:
    """Depth 0: the seeds (config, already on the driver), deduplicated, in frontier order."""
    directory.mkdir(parents=True)
    by_bucket: list[list[str]] = [[] for _ in range(buckets)]
    for url in sorted(dict.fromkeys(seeds), key=_order_key):
        by_bucket[bucket_of(url, buckets)].append(url)
    written = [_write_frontier_bucket(urls, _bucket_file(directory, b)) for b, urls in enumerate(by_bucket)]
    return Frontier(directory, tuple(n for n, _ in written), tuple(d for _, d in written))


def _next_frontier_bucket(links_dir: str, seen_files: list[str], out_file: str, bucket: int) -> tuple[int, str]:
    """Ray task: one bucket of the next frontier. Its memory is one bucket's links, plus one earlier frontier's
    bucket at a time: the distinct links of this bucket, minus every URL seen before, in frontier order."""
    pieces = []
    for links_file in sorted(Path(links_dir).glob("part-*.parquet")):
        parquet = pq.ParquetFile(links_file)
        for group in range(parquet.num_row_groups):
            stats = parquet.metadata.row_group(group).column(0).statistics
            if stats is not None and stats.has_min_max and not stats.min <= bucket <= stats.max:
                continue
            table = parquet.read_row_group(group)
            pieces.append(table.filter(pc.equal(table["bucket"], bucket))["url"])
    urls = pc.unique(pa.chunked_array([c for p in pieces for c in p.chunks], pa.string()))
    for seen_file in seen_files:  # the anti-join: URLs already in an earlier frontier are not new
        seen = pq.read_table(seen_file, columns=["url"])["url"].combine_chunks()
        urls = urls.filter(pc.invert(pc.is_in(urls, value_set=seen)))
    return _write_frontier_bucket(sorted(urls.to_pylist(), key=_order_key), Path(out_file))


def _next_frontier(links_dir: Path, seen: list[Frontier], directory: Path, buckets: int) -> Frontier:
    import ray

    directory.mkdir(parents=True)
    task = ray.remote(_next_frontier_bucket)
    refs = [
        task.remote(str(links_dir), [str(f.file(b)) for f in seen if f.counts[b]], str(_bucket_file(directory, b)), b)
        for b in range(buckets)
    ]
    written = ray.get(refs)  # one (count, digest) per bucket
    return Frontier(directory, tuple(n for n, _ in written), tuple(d for _, d in written))


def _read_urls(path: Path, start: int, stop: int) -> list[str]:
    """Rows ``start:stop`` of a frontier bucket file, reading only the row groups they lie in."""
    parquet, urls, offset = pq.ParquetFile(path), [], 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            column = parquet.read_row_group(group, columns=["url"])["url"]
            lo, hi = max(start - offset, 0), min(stop - offset, rows)
            urls.extend(column.slice(lo, hi - lo).to_pylist())
        offset += rows
        if offset >= stop:
            break
    return urls


# ------------------------------------------------------------------------------------------------ fetching a level


class PageFetcher:
    """Ray worker: fetch and parse pages. Plain callable over an Arrow batch of ``url, depth``."""

    def __init__(self, config: CrawlConfig):
        from mmcurate.stages.crawl.address import crawl_domains, narrow_domains
        from mmcurate.stages.crawl.fetch import Fetcher

        # every hop of a page fetch stays on the crawl's hosts: a redirect off them is domain_not_allowed
        domains = narrow_domains(crawl_domains(config), config.fetch.allowed_domains)
        self.fetcher = Fetcher(config.fetch.model_copy(update={"allowed_domains": domains}))

    def page(self, url: str, depth: int) -> dict[str, Any]:
        from mmcurate.stages.crawl.html import extract_page

        row: dict[str, Any] = {"url": url, "depth": depth, "final_url": None, "reason": None, "detail": None,
                               "noai": False, "noimageai": False, "links": [], "refs": "[]"}
        try:
            result = self.fetcher.fetch(url, accept=("text/html", "application/xhtml+xml"))
            extract = extract_page(result.body, result.url, result.content_type, self.fetcher.config.user_agent_token)
        except Rejected as rej:
            row.update(reason=rej.reason, detail=rej.detail)
            return row
        except Exception as err:  # one page that breaks the parser must not fail the crawl: it becomes a row
            row.update(reason=Reason.INTERNAL_ERROR.value, detail=internal_error_detail(err, url))
            return row
        row.update(
            final_url=result.url,
            noai=extract.noai,
            noimageai=extract.noimageai,
            links=list(extract.links),
            refs=json.dumps([asdict(ref) for ref in extract.media]),
        )
        return row

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = [self.page(r["url"], r["depth"]) for r in table.to_pylist()]
        return pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


@dataclass(frozen=True)
class LevelPlan:
    """What the workers of one level need (a few numbers per bucket): part ``i`` is the ``i``-th run of
    ``part_rows`` URLs of the fetched slice, bucket by bucket, so parts are numbered in frontier order."""

    depth: int
    directory: str  # where the parts go (the level's hidden temporary directory)
    bucket_files: tuple[str, ...]
    quotas: tuple[int, ...]  # per bucket, how many of its URLs are fetched
    part_rows: int
    buckets: int  # of the next frontier: how links are split

    @property
    def parts(self) -> int:
        return sum(-(-q // self.part_rows) for q in self.quotas)

    def part(self, index: int) -> tuple[int, int, int]:
        """(bucket, first row, end row) of part ``index``."""
        for bucket, quota in enumerate(self.quotas):
            here = -(-quota // self.part_rows)
            if index < here:
                return bucket, index * self.part_rows, min((index + 1) * self.part_rows, quota)
            index -= here
        raise IndexError(f"no part {index} in this level")


class LevelFetcher(PageFetcher):
    """Ray worker: one part of a BFS level per row of part numbers; writes the part's page rows and its links on
    the crawl's hosts (distinct, with their frontier bucket) and returns only counters."""

    def __init__(self, config: CrawlConfig, plan: LevelPlan):
        from mmcurate.stages.crawl.address import crawl_domains

        super().__init__(config)
        self.plan, self.domains = plan, crawl_domains(config)

    def __call__(self, table: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.fetch_part(i) for i in table["id"].to_pylist()], schema=COUNTER_SCHEMA)

    def fetch_part(self, index: int) -> dict[str, int]:
        from mmcurate.stages.crawl.address import host_allowed

        bucket, start, stop = self.plan.part(index)
        urls = _read_urls(Path(self.plan.bucket_files[bucket]), start, stop)
        pages = [self.page(url, self.plan.depth) for url in urls]
        name = f"part-{index:06d}.parquet"
        _write_durable(pa.Table.from_pylist(pages, schema=PAGE_SCHEMA), Path(self.plan.directory, name))
        checked: dict[str, int | None] = {}  # link -> its bucket, None when off the crawl's hosts
        for page in pages:
            for link in page["links"]:
                if link not in checked:
                    allowed = host_allowed(urlsplit(link).hostname or "", self.domains)
                    checked[link] = bucket_of(link, self.plan.buckets) if allowed else None
        by_bucket: dict[int, list[str]] = {}
        for link, link_bucket in checked.items():
            if link_bucket is not None:
                by_bucket.setdefault(link_bucket, []).append(link)
        links_file = Path(self.plan.directory, LINKS, name)
        with open(links_file, "wb") as sink:
            with pq.ParquetWriter(sink, LINK_SCHEMA) as writer:
                for link_bucket in sorted(by_bucket):  # one row group per bucket: the bucket tasks skip the others
                    urls = by_bucket[link_bucket]
                    writer.write_table(pa.table({"bucket": pa.array([link_bucket] * len(urls), pa.int32()),
                                                 "url": pa.array(urls, pa.string())}, schema=LINK_SCHEMA))
            sink.flush()
            os.fsync(sink.fileno())
        failed = sum(page["reason"] is not None for page in pages)
        refs = sum(len(json.loads(page["refs"])) for page in pages)
        return {"pages": len(pages), "failed": failed, "refs": refs}


def _write_durable(table: pa.Table, path: Path) -> None:
    """Write and fsync a file in a directory that is renamed into place later (by the driver, which then fsyncs
    only the directory: it never lists the parts)."""
    with open(path, "wb") as sink:
        pq.write_table(table, sink)
        sink.flush()
        os.fsync(sink.fileno())


def _scratch(final: Path) -> Path:
    scratch = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _links_dir(final: Path) -> Path:
    return final.parent / LINKS / final.name


def _publish(scratch: Path, final: Path, key: str) -> None:
    """Mark a complete level (or cut) directory with its frontier key and rename it into place; a level's links
    go first, so a level in place always has its links."""
    links = scratch / LINKS
    if links.is_dir():
        fsync_dir(links)
        _remove(_links_dir(final))
        _links_dir(final).parent.mkdir(exist_ok=True)
        links.rename(_links_dir(final))
        fsync_dir(_links_dir(final).parent)
    atomic_write_bytes(scratch / FRONTIER_MARKER, key.encode())
    _remove(final)
    scratch.rename(final)
    fsync_dir(final.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _saved(final: Path, key: str, *, links: bool) -> bool:
    """A level saved by an interrupted run is reused only if it was fetched from this very frontier slice."""
    marker = final / FRONTIER_MARKER
    if marker.is_file() and marker.read_bytes() == key.encode() and (not links or _links_dir(final).is_dir()):
        return True
    if final.exists():
        log.warning("crawl: %s came from another frontier; writing it again", final.name)
        _remove(final)
    return False


def _fetch_level(
    config: CrawlConfig, frontier: Frontier, pages: int, depth: int, final: Path, key: str
) -> dict[str, int]:
    import ray

    scratch = _scratch(final)
    (scratch / LINKS).mkdir()
    plan = LevelPlan(
        depth=depth,
        directory=str(scratch),
        bucket_files=tuple(str(frontier.file(b)) for b in range(len(frontier.counts))),
        quotas=frontier.quotas(pages),
        # a part is one actor call: batch_size pages, fewer so that every worker gets one, more past MAX_PARTS
        part_rows=max(1, min(config.batch_size, pages // config.concurrency), -(-pages // MAX_PARTS)),
        buckets=len(frontier.counts),
    )
    counters = on_actors(
        # the parts as items, not ray.data.range: a range is read by 1-CPU tasks, which a fixed pool of 0.5-CPU
        # fetchers spread over 1-CPU nodes leaves no node room for (a two-node cluster hung at depth 1)
        ray.data.from_items([{"id": i} for i in range(plan.parts)], override_num_blocks=plan.parts),
        LevelFetcher, (config, plan), [config], tasks=plan.parts,
    )
    totals = dict.fromkeys(COUNTER_SCHEMA.names, 0)
    for batch in counters.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in totals:
            totals[name] += pc.sum(batch[name]).as_py() or 0
    if totals["pages"] != pages:  # every page of the slice in exactly one part
        raise RuntimeError(f"crawl: depth {depth}: {totals['pages']} pages written, {pages} expected")
    _publish(scratch, final, key)
    return totals


def _write_cut_part(bucket_file: str, start: int, stop: int, depth: int, why: str, out_file: str) -> int:
    """Ray task: rows ``start:stop`` of one frontier bucket as crawl_limit page rows, streamed."""
    with open(out_file, "wb") as sink:
        with pq.ParquetWriter(sink, PAGE_SCHEMA) as writer:
            for first in range(start, stop, FRONTIER_ROW_GROUP):
                urls = _read_urls(Path(bucket_file), first, min(first + FRONTIER_ROW_GROUP, stop))
                n = len(urls)
                writer.write_table(pa.table({
                    "url": pa.array(urls, pa.string()),
                    "depth": pa.array([depth] * n, pa.int32()),
                    "final_url": pa.nulls(n, pa.string()),
                    "reason": pa.array([Reason.CRAWL_LIMIT.value] * n, pa.string()),
                    "detail": pa.array([why] * n, pa.string()),
                    "noai": pa.array([False] * n, pa.bool_()),
                    "noimageai": pa.array([False] * n, pa.bool_()),
                    "links": pa.array([[]] * n, pa.list_(pa.string())),
                    "refs": pa.array(["[]"] * n, pa.string()),
                }, schema=PAGE_SCHEMA))
        sink.flush()
        os.fsync(sink.fileno())
    return stop - start


def _cut(frontier: Frontier, fetched: int, depth: int, why: str, final: Path) -> None:
    """Pages discovered but not fetched (the frontier past its first ``fetched`` URLs), as page rows with reason
    ``crawl_limit``: counted, not vanished. One Ray task per bucket with URLs past the cut."""
    import ray

    key = frontier.key(fetched, "cut", why)
    if _saved(final, key, links=False):
        return
    scratch = _scratch(final)
    task = ray.remote(_write_cut_part)
    refs = [
        task.remote(str(frontier.file(b)), quota, count, depth, why, str(scratch / f"part-{b:06d}.parquet"))
        for b, (quota, count) in enumerate(zip(frontier.quotas(fetched), frontier.counts, strict=True)) if count > quota
    ]
    ray.get(refs)
    _publish(scratch, final, key)


def crawl_pages(config: CrawlConfig, pages_dir: Path) -> int:
    """Crawl from the seeds, one BFS level at a time; each finished level is a directory in ``pages_dir``. A level
    already there (from a run that was killed) is replayed instead of fetched again, if the frontier slice it was
    fetched from is this run's. Pages cut by ``max_pages`` or ``max_depth`` go to ``pages_dir/level-*-cut.parquet``.
    Return the number of pages fetched."""
    buckets = frontier_buckets(config)
    pages_dir.mkdir(parents=True, exist_ok=True)
    frontiers = pages_dir / FRONTIERS
    _remove(frontiers)  # derived from the saved levels, so rebuilt on every run
    frontier = _seed_frontier(config.seeds, frontiers / "level-000", buckets)
    seen: list[Frontier] = []  # one entry per depth: a directory and a few numbers per bucket
    written: set[str] = set()  # names of the level and cut directories of this crawl, two per depth at most
    fetched = 0
    for depth in range(config.max_depth + 2):
        if not frontier.size:
            break
        budget = config.max_pages - fetched
        if depth > config.max_depth or budget <= 0:
            why = (f"depth {depth} > max_depth {config.max_depth}" if depth > config.max_depth
                   else f"max_pages {config.max_pages} reached")
            log.warning("crawl: %s; %d discovered pages not fetched", why, frontier.size)
            _cut(frontier, 0, depth, why, pages_dir / f"level-{depth:03d}-cut.parquet")
            written.add(f"level-{depth:03d}-cut.parquet")
            break
        pages = min(frontier.size, budget)
        if pages < frontier.size:
            why = f"max_pages {config.max_pages} reached"
            log.warning("crawl: %s: fetching %d of %d pages at depth %d", why, pages, frontier.size, depth)
            _cut(frontier, pages, depth, why, pages_dir / f"level-{depth:03d}-cut.parquet")
            written.add(f"level-{depth:03d}-cut.parquet")
        level_dir = pages_dir / f"level-{depth:03d}.parquet"
        key = frontier.key(pages)
        if _saved(level_dir, key, links=True):
            log.info("crawl: depth %d: reusing %d pages fetched by an interrupted run", depth, pages)
        else:
            totals = _fetch_level(config, frontier, pages, depth, level_dir, key)
            log.info("crawl: depth %d: %d pages fetched, %d failed, %d media references",
                     depth, totals["pages"], totals["failed"], totals["refs"])
        written.add(level_dir.name)
        fetched += pages
        seen.append(frontier)
        frontier = _next_frontier(_links_dir(level_dir), seen, frontiers / f"level-{depth + 1:03d}", buckets)
        log.info("crawl: depth %d: %d pages so far, %d new links", depth, fetched, frontier.size)
    # levels of an interrupted run that this crawl no longer reaches, their links, scratch directories, frontiers
    for stale in [*pages_dir.iterdir(), *(pages_dir / LINKS).iterdir()]:
        if stale.name not in written and stale != pages_dir / LINKS:
            _remove(stale)
    return fetched


# ------------------------------------------------------------------------------------------------ pages -> candidates


def page_ref_outcomes(
    refs: list[dict[str, Any]], noai: bool, noimageai: bool, max_refs: int, *, archived: bool = False
) -> Iterator[tuple[dict[str, Any], Rejected | None]]:
    """Every media reference of one readable page, in document order, with why it is not fetched (None: fetch
    it). One place decides this for live pages (``candidates_from_pages``) and archived ones (``WarcReader``):

    * the page's noai/noimageai opt-out refuses its references (X_ROBOTS_NOAI), as ``optout.page_media_refusal``;
    * a reference to media — the pair (image URL, audio URL) — already referenced earlier on the page is
      DUPLICATE_REFERENCE, naming the first one's position: 3,000 ``<img>`` of one file fetch or read it once;
    * distinct media past ``max_refs`` on one page are CRAWL_LIMIT (``max_refs_per_page``): one page cannot
      fan out into an unbounded number of fetches. Only references that would be fetched count towards it.

    Every reference gets exactly one verdict, so every reference still gets exactly one outcome row.
    """
    from mmcurate.stages.crawl.optout import page_media_refusal

    first: dict[tuple[str | None, str | None], int] = {}  # media -> position of its first reference
    admitted = 0
    for ref in refs:
        refusal = page_media_refusal(noai, noimageai, bool(ref.get("image_url")), archived=archived)
        if refusal is None:
            media = (ref.get("image_url"), ref.get("audio_url"))
            if media in first:
                why = f"same media as the reference at position {first[media]}"
                refusal = Rejected(Reason.DUPLICATE_REFERENCE, why)
            else:
                first[media] = ref["position"]
                if admitted >= max_refs:
                    refusal = Rejected(Reason.CRAWL_LIMIT, f"max_refs_per_page {max_refs} reached")
                else:
                    admitted += 1
        yield ref, refusal


def level_candidates(
    level: Path, fetch_dir: Path, refused_dir: Path, chunk_rows: int, max_refs_per_page: int = _DEFAULT_MAX_REFS
) -> tuple[int, int]:
    """One level's pages (a level directory, or a single parquet file of PAGE_SCHEMA rows), streamed: candidates
    to ``fetch_dir/<level>-NNNN.parquet`` (``chunk_rows`` each, the last fewer; page order, then reference order),
    outcome rows to ``refused_dir/<level name>``. Holds one chunk and one batch of pages. Returns (media
    references, failed pages)."""
    files = sorted(level.glob("part-*.parquet")) if level.is_dir() else [level]
    stem = level.name.removesuffix(".parquet")
    media = failed = chunks = 0
    to_fetch: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    partial = refused_dir / f".{level.name}.tmp"
    with pq.ParquetWriter(partial, OUTCOME_SCHEMA) as refused_out:
        wrote = False
        batches = (b for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=PAGE_BATCH))
        for page in (page for batch in batches for page in batch.to_pylist()):
            if page["reason"] is not None:
                failed += 1
                url = page["url"]
                record = empty_record(key=stable_key("page", url), source="page", url=url, page_url=url)
                refused.append(rejected(record, page["reason"], page["detail"] or ""))
            else:
                refs = json.loads(page["refs"])
                media += len(refs)
                for ref, refusal in page_ref_outcomes(refs, page["noai"], page["noimageai"], max_refs_per_page):
                    record = record_of_ref(page["url"], ref)
                    if refusal is not None:
                        refused.append(rejected(record, refusal.reason, refusal.detail))
                    else:
                        to_fetch.append(record)
            if len(refused) >= REFUSED_BATCH:
                refused_out.write_table(outcome_table(refused))
                refused, wrote = [], True
            while len(to_fetch) >= chunk_rows:
                _write_chunk(to_fetch[:chunk_rows], fetch_dir / f"{stem}-{chunks:04d}.parquet")
                to_fetch, chunks = to_fetch[chunk_rows:], chunks + 1
        if to_fetch:
            _write_chunk(to_fetch, fetch_dir / f"{stem}-{chunks:04d}.parquet")
        if refused or not wrote:  # an empty level still gets its (empty) outcome file
            refused_out.write_table(outcome_table(refused))
    os.replace(partial, refused_dir / level.name)
    return media, failed


def _write_chunk(records: list[dict[str, Any]], path: Path) -> None:
    atomic_write_parquet(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), path)


def _candidates_batch(table: pa.Table, *, pages_dir: str, fetch_dir: str, refused_dir: str, chunk_rows: int,
                      max_refs_per_page: int) -> pa.Table:
    """Ray Data task: ``level_candidates`` for each level named in the batch; counters out."""
    rows = []
    for name in table["level"].to_pylist():
        media, failed = level_candidates(Path(pages_dir, name), Path(fetch_dir), Path(refused_dir), chunk_rows,
                                         max_refs_per_page)
        rows.append({"media": media, "failed": failed})
    return pa.Table.from_pylist(rows, schema=pa.schema([pa.field("media", pa.int64()), pa.field("failed", pa.int64())]))


def candidates_from_pages(
    pages_dir: Path,
    fetch_dir: Path,
    refused_dir: Path,
    chunk_rows: int,
    max_refs_per_page: int = _DEFAULT_MAX_REFS,
) -> tuple[int, int]:
    """Turn page results into candidates: a record to fetch per media reference of a readable page (into
    ``fetch_dir``, chunks of ``chunk_rows``), and an outcome row per unreadable or cut page or per reference not
    fetched — noai page, media already referenced on the page, past ``max_refs_per_page``
    (``page_ref_outcomes``) — into ``refused_dir`` (one file per level). One Ray Data task per level writes them;
    the driver gets back two numbers per level. Returns (media references, failed pages)."""
    import ray

    fetch_dir.mkdir(parents=True, exist_ok=True)
    refused_dir.mkdir(parents=True, exist_ok=True)
    levels = sorted(p.name for p in pages_dir.glob("level-*.parquet"))  # two names per depth at most
    if not levels:
        return 0, 0
    counters = ray.data.from_items([{"level": name} for name in levels]).map_batches(
        _candidates_batch, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"pages_dir": str(pages_dir), "fetch_dir": str(fetch_dir), "refused_dir": str(refused_dir),
                   "chunk_rows": chunk_rows, "max_refs_per_page": max_refs_per_page},
    )
    media = failed = 0
    for batch in counters.iter_batches(batch_format="pyarrow", batch_size=None):
        media += pc.sum(batch["media"]).as_py() or 0
        failed += pc.sum(batch["failed"]).as_py() or 0
    return media, failed


def record_of_ref(page_url: str, ref: dict[str, Any]) -> dict[str, Any]:
    return empty_record(
        key=stable_key("page", page_url, ref["position"]),
        source="page",
        url=ref.get("image_url") or ref.get("audio_url"),
        page_url=page_url,
        position=ref["position"],
        image_url=ref.get("image_url"),
        audio_url=ref.get("audio_url"),
        alt=ref.get("alt"),
        title=ref.get("title"),
        figcaption=ref.get("figcaption"),
        subtitles_url=_pick_track(ref.get("tracks") or []),
        transcript_url=ref.get("transcript_url"),
    )


def _pick_track(tracks: list[dict[str, Any]]) -> str | None:
    """Captions over subtitles, English over other languages, then document order."""
    if not tracks:
        return None

    def rank(track: dict[str, Any]) -> tuple[int, int]:
        lang = (track.get("srclang") or "").lower()
        return (0 if track.get("kind") == "captions" else 1, 0 if lang.startswith("en") or not lang else 1)

    return sorted(tracks, key=rank)[0]["url"]
