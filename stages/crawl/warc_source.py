"""WARC files as a crawl input: pages and the media they reference, both read from the archive.

An archive is replayed, not re-crawled: a reference whose media is not in the same WARC is rejected
(``not_in_archive``) rather than fetched live, so a WARC run never touches the network. The opt-outs of a live
crawl hold here too (``optout.py``): an archived ``X-Robots-Tag`` refuses its page or medium, and a page's
``<meta name="robots">`` noai/noimageai refuses its media.

Two passes, so that memory holds one body at a time, never the archive's:
  1. read the archive once: decode and parse each HTML page as it passes (bodies capped at ``max_bytes``) and
     keep its media references; for every other response keep only where its record starts;
  2. for each reference, read just the records it needs, by offset, again capped: a body past the cap is
     ``body_too_large`` for that reference. A reference to media already referenced on its page is
     ``duplicate_reference`` and a page's distinct media past ``max_refs_per_page`` are ``crawl_limit``, neither
     read (``pages.page_ref_outcomes``, shared with the live crawl).
Outcome rows leave in batches of bounded size (the Ray callable is a generator).

Keys name the capture, not just the URL, so two archives of one site, or an archive and a live crawl of it, never
collide: ``stable_key("warc", <WARC-Record-ID of the page's response>, position)`` for a reference, and
``stable_key("warc", <record id>)`` for a page's own reject row; a record without an ID is named by
``(path, record offset)`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import empty_record, outcome_table, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import internal_error, kept, rejected
from mmcurate.stages.crawl.media import transcript_text
from mmcurate.stages.crawl.optout import header_refusal
from mmcurate.stages.crawl.pages import page_ref_outcomes, record_of_ref
from mmcurate.stages.crawl.warc import WarcResponse

HTML_TYPES = ("text/html", "application/xhtml+xml")
_PARTS = (("image", "image_url"), ("audio", "audio_url"), ("subtitles", "subtitles_url"), ("transcript", "transcript_url"))
_BATCH_BYTES = 64 * 1024 * 1024  # outcome rows handed to Ray at a time, by media bytes
_BATCH_ROWS = 1000


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_page(url: str, headers: dict[str, str]) -> bool:
    return _media_type(headers) in HTML_TYPES


@dataclass
class _Page:
    response: WarcResponse  # its body dropped once parsed
    key_parts: tuple[Any, ...]  # what names this capture in keys
    refs: list[dict[str, Any]]  # MediaRef dicts
    noai: bool = False
    noimageai: bool = False


class WarcReader:
    """Ray worker: one WARC path → outcome rows for every media reference found in its pages."""

    def __init__(self, config: CrawlConfig):
        self.config = config
        self.token = config.fetch.user_agent_token
        self.refused_directives = config.fetch.disallowed_header_directives
        self.max_bytes = config.fetch.max_bytes

    def _refusal(self, headers: dict[str, str]) -> Rejected | None:
        values = [v for k, v in headers.items() if k == "x-robots-tag"]
        return header_refusal(values, self.token, self.refused_directives)

    def _page(self, path: str, response: WarcResponse) -> _Page | dict[str, Any]:
        """A readable page, or its reject row."""
        from mmcurate.stages.crawl.html import extract_page

        key_parts = (response.record_id,) if response.record_id else (path, response.offset)
        try:
            if response.status >= 400:
                raise Rejected(Reason.HTTP_ERROR, str(response.status))
            refusal = self._refusal(response.headers)
            if refusal is not None:
                raise refusal
            body = response.payload()
            extract = extract_page(body, response.url, response.headers.get("content-type"), self.token)
        except Rejected as rej:
            row = empty_record(key=stable_key("warc", *key_parts), source="warc", url=response.url, page_url=response.url)
            return rejected(row, rej.reason, rej.detail)
        except Exception as err:  # one page that breaks the parser is a row, not a failed crawl
            row = empty_record(key=stable_key("warc", *key_parts), source="warc", url=response.url, page_url=response.url)
            return internal_error(row, err)
        refs = [asdict(ref) for ref in extract.media]
        return _Page(replace(response, body=None), key_parts, refs, extract.noai, extract.noimageai)

    def _index(self, path: str) -> tuple[list[_Page | dict[str, Any]], dict[str, WarcResponse], dict[str, Any] | None]:
        """Pass 1: pages parsed (or their reject rows), other responses by URL (the last capture wins), damage."""
        from mmcurate.stages.crawl.warc import iter_warc_responses

        pages: list[_Page | dict[str, Any]] = []
        media: dict[str, WarcResponse] = {}
        damage = None
        try:
            for response in iter_warc_responses(path, self.max_bytes, read_body=_is_page):
                if _is_page(response.url, response.headers):
                    pages.append(self._page(path, response))
                else:
                    media[response.url] = response
        except Rejected as rej:  # the records before the damage are still used
            damage = rejected(empty_record(key=stable_key("warc", path), source="warc", url=path), rej.reason, rej.detail)
        except Exception as err:  # e.g. a reader bug on a hostile archive: the archive's row says so
            damage = internal_error(empty_record(key=stable_key("warc", path), source="warc", url=path), err)
        return pages, media, damage

    def _media(self, path: str, record: dict[str, Any], media: dict[str, WarcResponse]) -> dict[str, Any]:
        """Pass 2 for one reference: each part it names, read from the archive by offset."""
        from mmcurate.stages.crawl.warc import read_response_at

        changes: dict[str, Any] = {}
        for part, column in _PARTS:
            url = record.get(column)
            if not url:
                continue
            indexed = media.get(url)
            if indexed is None:
                raise Rejected(Reason.NOT_IN_ARCHIVE, f"{part} {url}")
            if indexed.status >= 400:
                raise Rejected(Reason.HTTP_ERROR, f"{part} {url}: {indexed.status}")
            refusal = self._refusal(indexed.headers)
            if refusal is not None:
                raise Rejected(refusal.reason, f"{part} {url}: {refusal.detail}")
            try:
                body = read_response_at(path, indexed.offset, self.max_bytes).payload()
            except Rejected as rej:
                raise Rejected(rej.reason, f"{part} {url}: {rej.detail}") from None
            changes[part] = transcript_text(body, url) if part == "transcript" else body
        return changes

    def rows(self, path: str) -> Iterator[dict[str, Any]]:
        """Outcome rows of one archive: its damage (if any) first, then page by page, reference by reference."""
        pages, media, damage = self._index(path)
        if damage is not None:
            yield damage
        for page in pages:
            if not isinstance(page, _Page):
                yield page
                continue
            # opt-outs, repeats of media already referenced on the page and references past max_refs_per_page are
            # decided where the live crawl decides them: a repeat is not read from the archive again
            outcomes = page_ref_outcomes(
                page.refs, page.noai, page.noimageai, self.config.max_refs_per_page, archived=True
            )
            for ref, refusal in outcomes:
                record = {
                    **record_of_ref(page.response.url, ref),
                    "key": stable_key("warc", *page.key_parts, ref["position"]),
                    "source": "warc",
                }
                try:
                    if refusal is not None:
                        raise refusal
                    yield kept(record, **self._media(path, record, media))
                except Rejected as rej:
                    yield rejected(record, rej.reason, rej.detail)
                except Exception as err:
                    yield internal_error(record, err)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        batch: list[dict[str, Any]] = []
        size, handed = 0, 0
        for path in table["path"].to_pylist():
            for row in self.rows(path):
                batch.append(row)
                size += sum(len(row[part] or b"") for part in ("image", "audio", "subtitles"))
                if size >= _BATCH_BYTES or len(batch) >= _BATCH_ROWS:
                    yield outcome_table(batch)
                    batch, size, handed = [], 0, handed + 1
        if batch or not handed:  # an archive without references still answers, with an empty table
            yield outcome_table(batch)

