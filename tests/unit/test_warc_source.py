"""The WARC crawl input, as a plain callable (no Ray): pages and media replayed from the archive."""

import io
import json
import subprocess
import sys
import textwrap
import zlib

import pyarrow as pa
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmcurate.schemas.record import REASON_COLUMN, stable_key
from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig
from mmcurate.stages.crawl.pages import record_of_ref
from mmcurate.stages.crawl.warc_source import WarcReader

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>t</title></head><body>
<figure><img src="/a.jpg" alt="a red circle"><figcaption>a red circle on grey</figcaption></figure>
<img src="/forbidden.jpg" alt="a blue square">
<img src="/missing.jpg" alt="a green star">
<audio src="/talk.flac"><track kind="captions" src="/talk.vtt"></audio>
</body></html>"""


def response(writer, url, body, content_type, extra=()):
    headers = StatusAndHeaders("200 OK", [("Content-Type", content_type), *extra], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def make_warc(path, page=PAGE, extra_records=()):
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        response(w, "http://site.test/page.html", page, "text/html")
        response(w, "http://site.test/a.jpg", b"\xff\xd8jpeg-bytes", "image/jpeg")
        response(w, "http://site.test/forbidden.jpg", b"\xff\xd8other", "image/jpeg", [("X-Robots-Tag", "noai")])
        response(w, "http://site.test/talk.flac", b"fLaC....", "audio/flac")
        response(w, "http://site.test/talk.vtt", b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n", "text/vtt")
        for url, body, content_type, extra in extra_records:
            response(w, url, body, content_type, extra)


def read(path, **fetch):
    return list(WarcReader(CrawlConfig(warcs=(str(path),), fetch=FetchConfig(**fetch))).rows(str(path)))


def test_pages_and_media_replayed_from_the_archive(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    make_warc(path)
    rows = read(path)
    by_url = {r["url"]: r for r in rows}
    assert len(rows) == 4  # one outcome per media reference
    fig = by_url["http://site.test/a.jpg"]
    assert fig[REASON_COLUMN] is None and fig["image"] == b"\xff\xd8jpeg-bytes"
    assert fig["figcaption"] == "a red circle on grey" and fig["source"] == "warc"
    assert by_url["http://site.test/forbidden.jpg"][REASON_COLUMN] == "x_robots_noai"
    assert by_url["http://site.test/missing.jpg"][REASON_COLUMN] == "not_in_archive"
    talk = by_url["http://site.test/talk.flac"]
    assert talk[REASON_COLUMN] is None and talk["subtitles"].startswith(b"WEBVTT")


def test_truncated_archive_keeps_good_records_and_reports_damage(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    make_warc(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) - 40])
    rows = read(cut)
    reasons = [r[REASON_COLUMN] for r in rows]
    assert reasons[0] == "warc_malformed"  # the archive's own row comes first
    assert any(r["url"] == "http://site.test/a.jpg" and r[REASON_COLUMN] is None for r in rows)


def test_media_over_the_cap_is_body_too_large_not_missing(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    # a later capture of a.jpg, larger than the cap (the page itself is under it); the last capture of a URL wins
    make_warc(path, extra_records=[("http://site.test/a.jpg", b"\xff\xd8" + bytes(5000), "image/jpeg", ())])
    by_url = {r["url"]: r for r in read(path, max_bytes=2000)}
    assert by_url["http://site.test/a.jpg"][REASON_COLUMN] == "body_too_large"
    assert "image http://site.test/a.jpg: decoded body exceeds 2000 bytes" in by_url["http://site.test/a.jpg"]["_detail"]
    assert by_url["http://site.test/missing.jpg"][REASON_COLUMN] == "not_in_archive"
    assert by_url["http://site.test/talk.flac"][REASON_COLUMN] is None


def test_a_page_over_the_cap_or_opted_out_by_header_is_one_reject_row(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    make_warc(path, extra_records=[("http://site.test/noai.html", PAGE, "text/html", [("X-Robots-Tag", "noai")])])
    rows = read(path, max_bytes=100)  # PAGE is larger than 100 bytes
    page_rows = {r["url"]: (r[REASON_COLUMN], r["_detail"]) for r in rows if r["page_url"] == r["url"]}
    assert page_rows == {
        "http://site.test/page.html": ("body_too_large", "decoded body exceeds 100 bytes"),
        "http://site.test/noai.html": ("x_robots_noai", "X-Robots-Tag: noai"),
    }


def test_keys_name_the_capture_so_two_archives_of_one_site_never_collide(tmp_path):
    first, second = tmp_path / "monday.warc.gz", tmp_path / "tuesday.warc.gz"
    make_warc(first)
    make_warc(second)  # the same URLs and bytes, captured again
    rows = read(first) + read(second)
    assert len({r["key"] for r in rows}) == len(rows) == 8
    # nor with a live crawl of the same pages, whose keys are ("page", page URL, position)
    live = {record_of_ref(r["page_url"], {"position": r["position"]})["key"] for r in rows}
    assert not live & {r["key"] for r in rows}
    # and a rerun of one archive gives the same keys
    assert [r["key"] for r in read(first)] == [r["key"] for r in rows[:4]]


def test_a_record_without_an_id_is_named_by_path_and_offset(tmp_path):
    path = tmp_path / "crawl.warc"  # uncompressed, so the header line can be cut out of the bytes
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=False)
        response(w, "http://site.test/page.html", PAGE, "text/html")
    data = path.read_bytes()
    start = data.index(b"WARC-Record-ID:")
    path.write_bytes(data[:start] + data[data.index(b"\r\n", start) + 2 :])
    copy = tmp_path / "copy.warc"
    copy.write_bytes(path.read_bytes())
    rows, copied = read(path), read(copy)
    assert rows[0]["key"] == stable_key("warc", str(path), 0, 0)
    assert {r["key"] for r in rows}.isdisjoint(r["key"] for r in copied)


def test_the_ray_callable_hands_rows_over_in_batches(tmp_path, monkeypatch):
    import mmcurate.stages.crawl.warc_source as warc_source

    path = tmp_path / "crawl.warc.gz"
    make_warc(path)
    monkeypatch.setattr(warc_source, "_BATCH_ROWS", 3)
    reader = WarcReader(CrawlConfig(warcs=(str(path),)))
    tables = list(reader(pa.table({"path": [str(path)]})))
    assert [t.num_rows for t in tables] == [3, 1]
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    assert [t.num_rows for t in reader(pa.table({"path": [str(empty)]}))] == [0]


BOMB_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig
    from mmcurate.stages.crawl.warc_source import WarcReader

    path = sys.argv[1]
    reader = WarcReader(CrawlConfig(warcs=(path,), fetch=FetchConfig(max_bytes=1_000_000)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = [(row["url"], row["_reason"]) for row in reader.rows(path)]
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"grown_mib": grown_kib / 1024, "outcomes": outcomes}))
    """
)


def gzip_zeros(mib: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(compressor.compress(bytes(1 << 20)) for _ in range(mib)) + compressor.flush()


@pytest.mark.timeout(300)
def test_peak_memory_stays_bounded_on_an_archive_of_compression_bombs(tmp_path):
    """512 MiB of zeros, gzipped to half a megabyte, as an image, as a chunked image and as a page: each is
    refused at the 1 MB cap without being inflated whole (the old reader grew by the whole 512 MiB, per body)."""
    bomb = gzip_zeros(512)
    page = b'<img src="/bomb.jpg"><img src="/chunked.jpg"><img src="/fine.jpg">'
    path = tmp_path / "bombs.warc.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        response(w, "http://site.test/page.html", page, "text/html")
        response(w, "http://site.test/bomb.html", bomb, "text/html", [("Content-Encoding", "gzip")])
        response(w, "http://site.test/bomb.jpg", bomb, "image/jpeg", [("Content-Encoding", "gzip")])
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(bomb), bomb)
        response(w, "http://site.test/chunked.jpg", chunked, "image/jpeg",
                 [("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")])  # fmt: skip
        response(w, "http://site.test/fine.jpg", b"\xff\xd8fine", "image/jpeg")
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert sorted(map(tuple, result["outcomes"])) == [
        ("http://site.test/bomb.html", "body_too_large"),
        ("http://site.test/bomb.jpg", "body_too_large"),
        ("http://site.test/chunked.jpg", "body_too_large"),
        ("http://site.test/fine.jpg", None),
    ]
    assert result["grown_mib"] < 128, result["grown_mib"]


def test_an_unexpected_error_on_one_archived_page_is_an_internal_error_row(tmp_path, monkeypatch):
    warc = tmp_path / "site.warc.gz"
    make_warc(warc)
    calls = []

    def broken_extract(*args, **kwargs):
        calls.append(args)
        raise KeyError("parser bug")

    monkeypatch.setattr("mmcurate.stages.crawl.html.extract_page", broken_extract)
    rows = list(WarcReader(CrawlConfig(warcs=(str(warc),))).rows(str(warc)))
    assert calls and rows
    assert {r[REASON_COLUMN] for r in rows} == {"internal_error"}
    assert all("KeyError" in r["_detail"] and "[trace " in r["_detail"] for r in rows)
