"""One page's media references fan out boundedly, live and archived alike (no Ray, no network).

A page with 3,000 ``<img>`` of one file used to become 3,000 fetches (live) or 3,000 reads of the same body (WARC);
now a repeat of media already referenced on the page is a ``duplicate_reference`` row, and distinct media past
``crawl.max_refs_per_page`` are ``crawl_limit`` rows. Both paths decide through ``pages.page_ref_outcomes``.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmcurate.schemas.record import DETAIL_COLUMN, REASON_COLUMN
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.crawl.pages import PAGE_SCHEMA, PageFetcher, level_candidates
from mmcurate.stages.crawl.warc_source import WarcReader

SITE = "http://site.test"
PAGE_URL = f"{SITE}/page.html"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(270_000)  # ~270 KB, the reviewer's image
REPEATS = 3000


def html(*tags: str, head: str = "") -> bytes:
    return f"<!doctype html><html><head>{head}</head><body>{''.join(tags)}</body></html>".encode()


def same_image_page() -> bytes:
    return html(*(f'<img src="/one.png" alt="copy {i}">' for i in range(REPEATS)))


def distinct_images_page(n: int) -> bytes:
    return html(*(f'<img src="/img{i}.png" alt="image {i}">' for i in range(n)))


# ---------------------------------------------------------------------------------------------- live pages


def live_candidates(tmp_path: Path, body: bytes, **crawl) -> tuple[list[dict], list[dict], int]:
    """The page through the real page path (PageFetcher.page parses it; only the HTTP fetch is stubbed), then
    ``level_candidates`` (what each Ray task of ``candidates_from_pages`` runs on one level): (records to fetch,
    reject rows, media references counted)."""
    config = CrawlConfig(seeds=(PAGE_URL,), **crawl)
    fetcher = PageFetcher(config)
    fetcher.fetcher.fetch = lambda url, accept=(): SimpleNamespace(body=body, url=url, content_type="text/html")
    page = fetcher.page(PAGE_URL, 0)
    assert page["reason"] is None, page
    pages_dir, fetch_dir, refused_dir = tmp_path / "pages", tmp_path / "fetch", tmp_path / "refused"
    pages_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([page], schema=PAGE_SCHEMA), pages_dir / "level-000.parquet")
    kwargs = {"max_refs_per_page": config.max_refs_per_page} if "max_refs_per_page" in crawl else {}
    fetch_dir.mkdir()
    refused_dir.mkdir()
    level = pages_dir / "level-000.parquet"
    media, failed = level_candidates(level, fetch_dir, refused_dir, config.chunk_rows, **kwargs)
    assert failed == 0
    to_fetch = [r for f in sorted(fetch_dir.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    refused = pq.read_table(refused_dir / "level-000.parquet").to_pylist()
    return to_fetch, refused, media


def test_a_live_page_with_one_image_3000_times_fetches_it_once(tmp_path):
    to_fetch, refused, media = live_candidates(tmp_path, same_image_page())
    assert media == REPEATS  # every reference is counted ...
    assert len(to_fetch) == 1  # ... but one fetch
    assert to_fetch[0]["image_url"] == f"{SITE}/one.png" and to_fetch[0]["position"] == 0
    assert to_fetch[0]["alt"] == "copy 0"  # the first reference keeps its normal path
    assert len(refused) == REPEATS - 1
    assert {r[REASON_COLUMN] for r in refused} == {"duplicate_reference"}
    assert {r[DETAIL_COLUMN] for r in refused} == {"same media as the reference at position 0"}
    assert sorted(r["position"] for r in refused) == list(range(1, REPEATS))
    keys = [r["key"] for r in to_fetch + refused]
    assert len(set(keys)) == len(keys) == REPEATS  # one outcome per reference, keys unique


def test_a_live_page_past_max_refs_per_page_gives_crawl_limit_rows(tmp_path):
    body = html(*(f'<img src="/img{i}.png">' for i in range(8)), '<img src="/img6.png">', '<img src="/img1.png">')
    to_fetch, refused, media = live_candidates(tmp_path, body, max_refs_per_page=5)
    assert media == 10
    assert [r["image_url"] for r in to_fetch] == [f"{SITE}/img{i}.png" for i in range(5)]
    outcomes = {r["position"]: (r[REASON_COLUMN], r[DETAIL_COLUMN]) for r in refused}
    assert outcomes == {
        5: ("crawl_limit", "max_refs_per_page 5 reached"),
        6: ("crawl_limit", "max_refs_per_page 5 reached"),
        7: ("crawl_limit", "max_refs_per_page 5 reached"),
        8: ("duplicate_reference", "same media as the reference at position 6"),  # a repeat of a capped one
        9: ("duplicate_reference", "same media as the reference at position 1"),
    }
    keys = [r["key"] for r in to_fetch + refused]
    assert len(set(keys)) == len(keys) == 10


def test_the_default_cap_applies_to_live_pages(tmp_path):
    to_fetch, refused, _ = live_candidates(tmp_path, distinct_images_page(1003))
    assert len(to_fetch) == CrawlConfig.model_fields["max_refs_per_page"].default == 1000
    assert [(r["position"], r[REASON_COLUMN]) for r in refused] == [(p, "crawl_limit") for p in (1000, 1001, 1002)]


def test_opt_outs_still_refuse_every_reference_of_the_page(tmp_path):
    noai = html('<img src="/a.png">', '<img src="/a.png">', '<audio src="/t.flac"></audio>',
                head='<meta name="robots" content="noai">')  # fmt: skip
    to_fetch, refused, _ = live_candidates(tmp_path, noai)
    assert to_fetch == []
    assert [r[REASON_COLUMN] for r in refused] == ["x_robots_noai"] * 3
    noimageai = html('<img src="/a.png">', '<img src="/a.png">', '<audio src="/t.flac"></audio>',
                     '<audio src="/t.flac"></audio>', head='<meta name="robots" content="noimageai">')  # fmt: skip
    to_fetch, refused, _ = live_candidates(tmp_path / "noimageai", noimageai)
    assert [r["audio_url"] for r in to_fetch] == [f"{SITE}/t.flac"]
    assert [(r["position"], r[REASON_COLUMN]) for r in refused] == [
        (0, "x_robots_noai"), (1, "x_robots_noai"), (3, "duplicate_reference")
    ]  # fmt: skip


def test_media_is_the_pair_of_image_and_audio(tmp_path):
    """A figure of image A with audio X is another sample than image A alone: both are fetched."""
    body = html('<figure><img src="/a.png"><audio src="/x.flac"></audio></figure>', '<img src="/a.png">',
                '<figure><img src="/a.png"><audio src="/x.flac"></audio></figure>')  # fmt: skip
    to_fetch, refused, _ = live_candidates(tmp_path, body)
    assert [(r["image_url"], r["audio_url"]) for r in to_fetch] == [
        (f"{SITE}/a.png", f"{SITE}/x.flac"), (f"{SITE}/a.png", None)
    ]  # fmt: skip
    assert [(r["position"], r[DETAIL_COLUMN]) for r in refused] == [(2, "same media as the reference at position 0")]


def test_max_refs_per_page_is_at_least_one():
    assert CrawlConfig(seeds=(PAGE_URL,), max_refs_per_page=1).max_refs_per_page == 1
    with pytest.raises(ValidationError):
        CrawlConfig(seeds=(PAGE_URL,), max_refs_per_page=0)


# ---------------------------------------------------------------------------------------------- WARC pages


def write_warc(path: Path, page: bytes, media: dict[str, bytes]) -> None:
    def response(writer, url, body, content_type):
        headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        response(writer, PAGE_URL, page, "text/html")
        for url, body in media.items():
            response(writer, f"{SITE}{url}", body, "image/png")


def counted_reads(monkeypatch) -> list[tuple[str, int]]:
    import mmcurate.stages.crawl.warc as warc

    reads, real = [], warc.read_response_at

    def read_response_at(path, offset, max_bytes):
        reads.append((path, offset))
        return real(path, offset, max_bytes)

    monkeypatch.setattr(warc, "read_response_at", read_response_at)
    return reads


def test_a_warc_page_with_one_image_3000_times_reads_it_once(tmp_path, monkeypatch):
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, same_image_page(), {"/one.png": PNG})
    reads = counted_reads(monkeypatch)
    rows = list(WarcReader(CrawlConfig(warcs=(str(path),))).rows(str(path)))
    assert len(rows) == REPEATS  # one outcome per reference
    kept = [r for r in rows if r[REASON_COLUMN] is None]
    assert len(kept) == 1 and kept[0]["image"] == PNG and kept[0]["position"] == 0
    duplicates = [r for r in rows if r[REASON_COLUMN] == "duplicate_reference"]
    assert len(duplicates) == REPEATS - 1
    assert {r[DETAIL_COLUMN] for r in duplicates} == {"same media as the reference at position 0"}
    assert len(reads) == 1  # the body is read from the archive once, not 3,000 times
    assert sum(len(r["image"] or b"") for r in rows) == len(PNG)  # 270 KB yielded, not 812 MB
    assert len({r["key"] for r in rows}) == REPEATS


def test_a_warc_page_past_max_refs_per_page_gives_crawl_limit_rows(tmp_path, monkeypatch):
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, distinct_images_page(8), {f"/img{i}.png": PNG[:100] + bytes([i]) for i in range(8)})
    reads = counted_reads(monkeypatch)
    rows = list(WarcReader(CrawlConfig(warcs=(str(path),), max_refs_per_page=5)).rows(str(path)))
    assert [(r["position"], r[REASON_COLUMN]) for r in rows] == [(p, None) for p in range(5)] + [
        (p, "crawl_limit") for p in (5, 6, 7)
    ]
    assert {r[DETAIL_COLUMN] for r in rows[5:]} == {"max_refs_per_page 5 reached"}
    assert len(reads) == 5  # references past the cap are not read
    assert len({r["key"] for r in rows}) == 8


def test_live_and_archived_pages_get_the_same_verdicts(tmp_path):
    """One helper decides both paths: the same page gives the same reason and detail per position."""
    body = html(*(f'<img src="/img{i % 4}.png">' for i in range(12)), '<img src="/img9.png">',
                '<img src="/img5.png">', '<img src="/img9.png">')  # fmt: skip
    _, refused, _ = live_candidates(tmp_path, body, max_refs_per_page=5)
    live = {r["position"]: (r[REASON_COLUMN], r[DETAIL_COLUMN]) for r in refused}
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, body, {f"/img{i}.png": b"\x89PNG" + bytes([i]) for i in range(10)})
    rows = list(WarcReader(CrawlConfig(warcs=(str(path),), max_refs_per_page=5)).rows(str(path)))
    archived = {r["position"]: (r[REASON_COLUMN], r[DETAIL_COLUMN]) for r in rows if r[REASON_COLUMN] is not None}
    assert live == archived and len(live) == 15 - 5  # img0-3 and img9 kept; img5 past the cap; the rest repeats
    assert archived[14] == ("duplicate_reference", "same media as the reference at position 12")
