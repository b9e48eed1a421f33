"""WARC files as a crawl input: pages and the media they reference, both read from the archive.

An archive is replayed, not re-crawled: a reference whose media is not in the same WARC is rejected
(``not_in_archive``) rather than fetched live, so a WARC run never touches the network. Archived
``X-Robots-Tag`` headers and ``<meta name="robots">`` directives are honoured as in a live crawl.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pyarrow as pa

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import empty_record, outcome_table, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import StageContext, kept, rejected
from mmcurate.stages.crawl.fetch import x_robots_directives
from mmcurate.stages.crawl.media import transcript_text
from mmcurate.stages.crawl.pages import record_of_ref

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class WarcReader:
    """Ray worker: one WARC path → outcome rows for every media reference found in its pages."""

    def __init__(self, config: CrawlConfig):
        from mmcurate.stages.crawl.policy import fetch_policy

        policy = fetch_policy(config.fetch)
        self.config = config
        self.token = policy.user_agent_token
        self.refused_directives = {d.lower() for d in policy.disallowed_header_directives}

    def read(self, path: str) -> list[dict[str, Any]]:
        from mmcurate.stages.crawl.html import extract_page
        from mmcurate.stages.crawl.warc import iter_warc_responses

        pages: list[tuple[str, Any]] = []
        bodies: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        try:
            for response in iter_warc_responses(path):
                if _media_type(response.headers) in HTML_TYPES:
                    pages.append((response.url, response))
                elif len(response.body) <= self.config.fetch.max_bytes:
                    bodies[response.url] = response
        except Rejected as rej:  # the records before the damage are still used
            rows.append(rejected(empty_record(key=stable_key("warc", path), source="warc", url=path), rej.reason, rej.detail))
        for page_url, response in pages:
            try:
                if response.status >= 400:
                    raise Rejected(Reason.HTTP_ERROR, str(response.status))
                extract = extract_page(response.body, page_url, response.headers.get("content-type"), self.token)
            except Rejected as rej:
                page = empty_record(key=stable_key("page", page_url), source="warc", url=page_url, page_url=page_url)
                rows.append(rejected(page, rej.reason, rej.detail))
                continue
            for ref in extract.media:
                record = {**record_of_ref(page_url, asdict(ref)), "source": "warc"}
                try:
                    if extract.noai or (extract.noimageai and record["image_url"]):
                        raise Rejected(Reason.X_ROBOTS_NOAI, "the archived page carries a noai robots directive")
                    rows.append(kept(record, **self._media(record, bodies)))
                except Rejected as rej:
                    rows.append(rejected(record, rej.reason, rej.detail))
        return rows

    def _media(self, record: dict[str, Any], bodies: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for part, column in (("image", "image_url"), ("audio", "audio_url"), ("subtitles", "subtitles_url"),
                             ("transcript", "transcript_url")):
            url = record.get(column)
            if not url:
                continue
            response = bodies.get(url)
            if response is None:
                raise Rejected(Reason.NOT_IN_ARCHIVE, f"{part} {url}")
            if response.status >= 400:
                raise Rejected(Reason.HTTP_ERROR, f"{part} {url}: {response.status}")
            values = [v for k, v in response.headers.items() if k == "x-robots-tag"]
            if x_robots_directives(values, self.token) & self.refused_directives:
                raise Rejected(Reason.X_ROBOTS_NOAI, f"{part} {url}: X-Robots-Tag: {'; '.join(values)}")
            if part == "transcript":
                changes["transcript"] = transcript_text(response.body, url)
            else:
                changes[part] = response.body
        return changes

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = [row for path in table["path"].to_pylist() for row in self.read(path)]
        return outcome_table(rows)


def warc_candidates(config: CrawlConfig, ctx: StageContext) -> Any:
    import ray

    return ray.data.from_items([{"path": p} for p in config.warcs]).map_batches(
        WarcReader,
        fn_constructor_args=(config,),
        batch_format="pyarrow",
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.concurrency),
    )
