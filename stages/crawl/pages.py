"""Breadth-first page crawl: fetch pages level by level on Ray, keep their media references as candidates.

Each level is one Ray Data map over the frontier; only the small per-page results (links, references, failure
reason) come back to the driver, which picks the next frontier. A page that cannot be read becomes a reject row;
a page that can contributes one outcome per media reference (a candidate to fetch, or a reject row: opt-out,
repeated media, past ``max_refs_per_page``; see ``page_ref_outcomes``) and no row of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, outcome_table, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import internal_error_detail, on_actor_pool, rejected
from mmcurate.stages.files import atomic_write_parquet

log = logging.getLogger("mmcurate.crawl")

_DEFAULT_MAX_REFS: int = CrawlConfig.model_fields["max_refs_per_page"].default
FRONTIER_KEY = b"mmcurate.frontier_sha256"  # parquet metadata of a saved level: the frontier it was fetched from

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


def _fetch_level(config: CrawlConfig, frontier: list[str], depth: int) -> pa.Table:
    import ray

    level = on_actor_pool(
        ray.data.from_items([{"url": u, "depth": depth} for u in frontier]), PageFetcher, (config,),
        batch_size=max(1, min(config.batch_size, len(frontier) // config.concurrency or 1)),
        concurrency=config.concurrency, num_cpus=0.5,  # waits on the network, not the CPU
    )
    # page results are small (links and references, no bodies): one level at a time on the driver is fine
    rows = [row for batch in level.iter_batches(batch_format="pyarrow", batch_size=None) for row in batch.to_pylist()]
    order = {url: i for i, url in enumerate(frontier)}
    rows.sort(key=lambda row: order[row["url"]])  # frontier order, whatever order Ray finished in
    return pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


def _frontier_digest(frontier: list[str]) -> str:
    return hashlib.sha256("\n".join(frontier).encode("utf-8")).hexdigest()


def _saved_level(level_file: Path, frontier: list[str]) -> bool:
    """A level saved by an interrupted run is reused only if it was fetched from this very frontier."""
    if not level_file.exists():
        return False
    metadata = pq.read_schema(level_file).metadata or {}
    if metadata.get(FRONTIER_KEY) == _frontier_digest(frontier).encode():
        return True
    log.warning("crawl: %s was fetched from another frontier; fetching it again", level_file.name)
    level_file.unlink()
    return False


def _write_level(table: pa.Table, frontier: list[str], level_file: Path) -> None:
    metadata = {**(table.schema.metadata or {}), FRONTIER_KEY: _frontier_digest(frontier).encode()}
    atomic_write_parquet(table.replace_schema_metadata(metadata), level_file)


def _cut_pages(urls: list[str], depth: int, why: str) -> pa.Table:
    """Pages discovered but not fetched, as page rows with reason ``crawl_limit``: counted, not vanished."""
    rows = [{"url": url, "depth": depth, "final_url": None, "reason": Reason.CRAWL_LIMIT.value, "detail": why,
             "noai": False, "noimageai": False, "links": [], "refs": "[]"} for url in urls]
    return pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


def crawl_pages(config: CrawlConfig, pages_dir: Path) -> int:
    """Crawl from the seeds, one BFS level at a time; each finished level is written to ``pages_dir``. A level
    already there (from a run that was killed) is replayed instead of fetched again, if the frontier it was fetched
    from is this run's. Pages cut by ``max_pages`` or ``max_depth`` go to ``pages_dir/level-*-cut.parquet``.
    Return the number of pages fetched."""

    from mmcurate.stages.crawl.address import crawl_domains, host_allowed

    domains = crawl_domains(config)
    seen: set[str] = set()
    frontier = []
    for seed in config.seeds:
        if seed not in seen:
            seen.add(seed)
            frontier.append(seed)
    pages_dir.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for depth in range(config.max_depth + 2):
        if not frontier:
            break
        budget = config.max_pages - fetched
        if depth > config.max_depth or budget <= 0:
            why = f"depth {depth} > max_depth {config.max_depth}" if depth > config.max_depth else f"max_pages {config.max_pages} reached"
            log.warning("crawl: %s; %d discovered pages not fetched", why, len(frontier))
            atomic_write_parquet(_cut_pages(frontier, depth, why), pages_dir / f"level-{depth:03d}-cut.parquet")
            break
        if len(frontier) > budget:
            why = f"max_pages {config.max_pages} reached"
            log.warning("crawl: %s: fetching %d of %d pages at depth %d", why, budget, len(frontier), depth)
            atomic_write_parquet(_cut_pages(frontier[budget:], depth, why), pages_dir / f"level-{depth:03d}-cut.parquet")
            frontier = frontier[:budget]
        level_file = pages_dir / f"level-{depth:03d}.parquet"
        if _saved_level(level_file, frontier):
            log.info("crawl: depth %d: reusing %d pages fetched by an interrupted run", depth, len(frontier))
        else:
            _write_level(_fetch_level(config, frontier, depth), frontier, level_file)
        fetched += len(frontier)
        next_frontier = []
        for links in pq.read_table(level_file, columns=["links"])["links"].to_pylist():
            for link in links or []:
                if link not in seen and host_allowed(urlsplit(link).hostname or "", domains):
                    seen.add(link)
                    next_frontier.append(link)
        frontier = next_frontier
        log.info("crawl: depth %d: %d pages, %d new links", depth, fetched, len(frontier))
    return fetched


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


def candidates_from_pages(
    pages_dir: Path,
    fetch_dir: Path,
    refused_dir: Path,
    chunk_rows: int,
    max_refs_per_page: int = _DEFAULT_MAX_REFS,
) -> tuple[int, int]:
    """Turn page results into candidates: a record to fetch per media reference of a readable page (into
    ``fetch_dir``), and an outcome row per unreadable page or per reference not fetched — noai page, media
    already referenced on the page, past ``max_refs_per_page`` (``page_ref_outcomes``) — into ``refused_dir``.
    Returns (media references, failed pages)."""
    fetch_dir.mkdir(parents=True, exist_ok=True)
    refused_dir.mkdir(parents=True, exist_ok=True)
    media = failed = 0
    for level_file in sorted(pages_dir.glob("level-*.parquet")):
        to_fetch, refused = [], []
        for page in pq.read_table(level_file).to_pylist():
            if page["reason"] is not None:
                failed += 1
                record = empty_record(key=stable_key("page", page["url"]), source="page", url=page["url"], page_url=page["url"])
                refused.append(rejected(record, page["reason"], page["detail"] or ""))
                continue
            refs = json.loads(page["refs"])
            media += len(refs)
            for ref, refusal in page_ref_outcomes(refs, page["noai"], page["noimageai"], max_refs_per_page):
                record = record_of_ref(page["url"], ref)
                if refusal is not None:
                    refused.append(rejected(record, refusal.reason, refusal.detail))
                else:
                    to_fetch.append(record)
        for start in range(0, len(to_fetch), chunk_rows):
            chunk = pa.Table.from_pylist(to_fetch[start : start + chunk_rows], schema=RECORD_SCHEMA)
            pq.write_table(chunk, fetch_dir / f"{level_file.stem}-{start // chunk_rows:04d}.parquet")
        pq.write_table(outcome_table(refused), refused_dir / level_file.name)
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
