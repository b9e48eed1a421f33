"""The ``crawl`` source stage: URL lists (through img2dataset), web pages (breadth-first) and WARC files.

What flows out: one outcome row per candidate — every URL-list row, every media reference found on a readable
page or in a WARC, and every page that could not be read. Kept rows carry the raw fetched bytes (image, audio,
subtitles) and every text field the source offered; ``align`` turns them into samples.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import RecordStage, Stage, StageContext
from mmcurate.stages.files import fsync_dir, fsync_tree


def _chunk_id(chunk: Path) -> str:
    """A chunk's name and a digest of the candidate keys in it: saved outcomes are reused only for the same
    candidates, whatever produced the chunk file this time."""
    import pyarrow.parquet as pq

    keys = pq.read_table(chunk, columns=["key"])["key"].to_pylist()
    return f"{chunk.stem}-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:16]}"


def fetch_in_chunks(fetcher: RecordStage, chunks: list[Path], done_dir: Path, ctx: StageContext) -> Any:
    """Run ``fetcher`` over candidate chunks, one Ray Data job each, keeping each chunk's outcomes in
    ``done_dir`` (durable across a killed run): a chunk already done is not fetched again."""
    import ray

    from mmcurate.schemas.record import OUTCOME_SCHEMA

    done_dir.mkdir(parents=True, exist_ok=True)
    targets = []
    for chunk in chunks:
        target = done_dir / _chunk_id(chunk)
        targets.append(target)
        if target.exists():
            ctx.log.info("crawl: %s already fetched by an interrupted run", chunk.stem)
            continue
        partial = done_dir / f".{chunk.stem}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        fetcher.apply(ray.data.read_parquet(str(chunk)), ctx).write_parquet(str(partial))
        fsync_tree(partial)
        partial.rename(target)
        fsync_dir(done_dir)
    files = [str(f) for target in targets for f in sorted(target.glob("*.parquet"))]
    return ray.data.read_parquet(files) if files else ray.data.from_arrow(OUTCOME_SCHEMA.empty_table())


class CrawlStage(Stage[CrawlConfig]):
    kind = "crawl"

    def apply(self, upstream: Any, ctx: StageContext) -> Any:
        import ray

        from mmcurate.stages.crawl.media import MediaFetcher
        from mmcurate.stages.crawl.pages import candidates_from_pages, crawl_pages
        from mmcurate.stages.crawl.url_list import UrlListDownloader, number_url_list

        cfg = self.config
        fetched = ctx.progress_dir / "fetched"
        # The inputs run one after another, chunk by chunk: on a small machine, concurrent actor pools for every
        # input would wait on each other's CPUs, and finished chunks survive a killed run.
        parts = []
        if cfg.url_lists:
            listed = ctx.work_dir / "candidates" / "url_lists"
            unlisted = ctx.work_dir / "candidates" / "url_lists_refused"
            total = sum(number_url_list(spec, i, listed, cfg.chunk_rows, unlisted) for i, spec in enumerate(cfg.url_lists))
            ctx.log.info("crawl: %d URL-list rows", total)
            if unlisted.is_dir():
                parts.append(ray.data.read_parquet(str(unlisted)))
            if any(listed.glob("*.parquet")):
                parts.append(fetch_in_chunks(UrlListDownloader(cfg, self.name), sorted(listed.glob("*.parquet")), fetched, ctx))
        if cfg.seeds:
            pages = crawl_pages(cfg, ctx.progress_dir / "pages")
            shutil.copytree(ctx.progress_dir / "pages", ctx.work_dir / "pages")  # kept with the stage, for audits
            to_fetch, refused = ctx.work_dir / "candidates" / "media", ctx.work_dir / "candidates" / "refused"
            media, failed = candidates_from_pages(ctx.work_dir / "pages", to_fetch, refused, cfg.chunk_rows,
                                                  max_refs_per_page=cfg.max_refs_per_page)
            ctx.log.info("crawl: %d pages read, %d failed, %d media references", pages - failed, failed, media)
            parts.append(ray.data.read_parquet(str(refused)))
            if media:
                parts.append(fetch_in_chunks(MediaFetcher(cfg, self.name), sorted(to_fetch.glob("*.parquet")), fetched, ctx))
        if cfg.warcs:
            from mmcurate.stages.crawl.warc_source import warc_candidates

            parts.append(warc_candidates(cfg, ctx).materialize())
        if not parts:
            raise ValueError("crawl found no candidates: every input was empty")
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
