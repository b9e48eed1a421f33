"""The ``crawl`` source stage: URL lists (through img2dataset), web pages (breadth-first) and WARC files.

What flows out: one outcome row per candidate — every URL-list row, every media reference found on a readable
page or in a WARC, and every page that could not be read. Kept rows carry the raw fetched bytes (image, audio,
subtitles) and every text field the source offered; ``align`` turns them into samples.
"""

from __future__ import annotations

from typing import Any

from schemas.stage_configs import CrawlConfig
from stages.base import Stage, StageContext


class CrawlStage(Stage[CrawlConfig]):
    kind = "crawl"

    def apply(self, upstream: Any, ctx: StageContext) -> Any:
        import ray

        from stages.crawl.media import MediaFetcher
        from stages.crawl.pages import candidates_from_pages, crawl_pages
        from stages.crawl.url_list import UrlListDownloader, number_url_list

        cfg = self.config
        # The inputs run one after another (each part materialized): on a small machine, concurrent actor pools
        # for every input would wait on each other's CPUs.
        parts = []
        if cfg.url_lists:
            listed = ctx.work_dir / "candidates" / "url_lists"
            total = sum(number_url_list(spec, i, listed) for i, spec in enumerate(cfg.url_lists))
            ctx.log.info("crawl: %d URL-list rows", total)
            if total:
                parts.append(UrlListDownloader(cfg, self.name).apply(ray.data.read_parquet(str(listed)), ctx).materialize())
        if cfg.seeds:
            pages = crawl_pages(cfg, ctx.work_dir / "pages")
            to_fetch, refused = ctx.work_dir / "candidates" / "media", ctx.work_dir / "candidates" / "refused"
            media, failed = candidates_from_pages(ctx.work_dir / "pages", to_fetch, refused)
            ctx.log.info("crawl: %d pages read, %d failed, %d media references", pages - failed, failed, media)
            parts.append(ray.data.read_parquet(str(refused)))
            if media:
                parts.append(MediaFetcher(cfg, self.name).apply(ray.data.read_parquet(str(to_fetch)), ctx).materialize())
        if cfg.warcs:
            from stages.crawl.warc_source import warc_candidates

            parts.append(warc_candidates(cfg, ctx).materialize())
        if not parts:
            raise ValueError("crawl found no candidates: every input was empty")
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
