"""The WARC crawl input, as a plain callable (no Ray): pages and media replayed from the archive."""

import io

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmcurate.schemas.record import REASON_COLUMN
from mmcurate.schemas.stage_configs import CrawlConfig
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


def make_warc(path):
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        response(w, "http://site.test/page.html", PAGE, "text/html")
        response(w, "http://site.test/a.jpg", b"\xff\xd8jpeg-bytes", "image/jpeg")
        response(w, "http://site.test/forbidden.jpg", b"\xff\xd8other", "image/jpeg", [("X-Robots-Tag", "noai")])
        response(w, "http://site.test/talk.flac", b"fLaC....", "audio/flac")
        response(w, "http://site.test/talk.vtt", b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n", "text/vtt")


def test_pages_and_media_replayed_from_the_archive(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    make_warc(path)
    rows = WarcReader(CrawlConfig(warcs=(str(path),))).read(str(path))
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
    rows = WarcReader(CrawlConfig(warcs=(str(cut),))).read(str(cut))
    reasons = [r[REASON_COLUMN] for r in rows]
    assert "warc_malformed" in reasons
    assert any(r["url"] == "http://site.test/a.jpg" and r[REASON_COLUMN] is None for r in rows)
