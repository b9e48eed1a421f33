"""The ``crawl`` source stage: URL lists (through img2dataset), web pages (breadth-first) and WARC files.

What flows out: one outcome row per candidate — every URL-list row, every media reference found on a readable
page or in a WARC, and every page that could not be read. Kept rows carry the raw fetched bytes (image, audio,
subtitles) and every text field the source offered; ``align`` turns them into samples.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import Block, InputError, RecordStage, SourceStage, StageContext


def _chunk_id(chunk: Path) -> str:
    """A chunk's name and a digest of the candidate keys in it: saved outcomes are reused only for the same
    candidates, whatever produced the chunk file this time."""
    keys = pq.read_table(chunk, columns=["key"])["key"].to_pylist()
    return f"{chunk.stem}-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:16]}"


class CrawlStage(SourceStage[CrawlConfig]):
    """Blocks: URL-list chunks (downloaded by img2dataset), chunks of media referenced by crawled pages (fetched
    by the guard), WARC files (read in place), and files of candidates already refused on the driver."""


    def plan(self, ctx: StageContext) -> list[Block]:
        from mmcurate.stages.crawl.pages import candidates_from_pages, crawl_pages
        from mmcurate.stages.crawl.url_list import number_url_list

        cfg = self.config
        blocks: list[Block] = []
        candidates = ctx.work_dir / "candidates"
        if cfg.url_lists:
            listed, unlisted = candidates / "url_lists", candidates / "url_lists_refused"
            total = sum(number_url_list(spec, i, listed, cfg.chunk_rows, unlisted) for i, spec in enumerate(cfg.url_lists))
            ctx.log.info("crawl: %d URL-list rows", total)
            blocks += _blocks_of(unlisted, "outcomes") + _blocks_of(listed, "url_list")
        if cfg.seeds:
            # BFS levels are fetched (and kept across a kill) before any media: the next level needs this one's links
            pages = crawl_pages(cfg, ctx.progress_dir / "pages")
            # kept with the stage, for audits (the links are in the page rows already)
            shutil.copytree(ctx.progress_dir / "pages", ctx.work_dir / "pages", ignore=shutil.ignore_patterns("_links"))
            to_fetch, refused = candidates / "media", candidates / "refused"
            media, failed = candidates_from_pages(ctx.work_dir / "pages", to_fetch, refused, cfg.chunk_rows,
                                                  max_refs_per_page=cfg.max_refs_per_page)
            ctx.log.info("crawl: %d pages fetched, %d not read or not fetched (failed or cut), %d media references",
                         pages, failed, media)
            blocks += _blocks_of(refused, "outcomes") + _blocks_of(to_fetch, "media")
        for i, path in enumerate(cfg.warcs):
            # the archive's bytes are in the stage's fingerprint, so its position and name identify it here
            blocks.append(Block(id=f"warc{i:04d}-{_safe(Path(path).name)}", path=str(path), kind="warc"))
        if not blocks:
            raise InputError("crawl found no candidates: every input was empty")
        return blocks

    def block_stage(self, block: Block) -> RecordStage | None:
        from mmcurate.stages.crawl.media import MediaFetcher
        from mmcurate.stages.crawl.url_list import UrlListDownloader

        fetchers = {"url_list": UrlListDownloader, "media": MediaFetcher}
        return fetchers[block.kind](self.config, self.name) if block.kind in fetchers else None

    def block_outcomes(self, block: Block) -> Iterator[pa.Table]:
        if block.kind == "warc":
            from mmcurate.stages.crawl.warc_source import WarcReader

            yield from WarcReader(self.config)(pa.table({"path": [block.path]}))
        elif block.kind == "outcomes":
            yield from (pa.Table.from_batches([b]) for b in pq.ParquetFile(block.path).iter_batches(batch_size=1024))
        else:
            raise ValueError(f"crawl: no block kind {block.kind!r}")


def _blocks_of(directory: Path, kind: str) -> list[Block]:
    return [Block(id=_chunk_id(chunk), path=str(chunk), kind=kind) for chunk in sorted(directory.glob("*.parquet"))]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
