"""Reading responses out of WARC files built in the test with warcio's own writer, intact and damaged."""

from __future__ import annotations

import gzip
import io

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.warc import WarcResponse, iter_warc_responses


def http(status: str, headers: list[tuple[str, str]]) -> StatusAndHeaders:
    return StatusAndHeaders(status, headers, protocol="HTTP/1.1")


def write_warc(use_gzip: bool, records: list[dict]) -> tuple[bytes, list[int]]:
    """The file's bytes and the offset just past each record."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=use_gzip)
    ends = []
    for spec in records:
        record = writer.create_warc_record(
            spec["url"],
            spec.get("type", "response"),
            payload=io.BytesIO(spec["payload"]),
            http_headers=spec.get("http"),
            warc_headers_dict=spec.get("warc_headers"),
            warc_content_type=spec.get("warc_content_type"),
        )
        writer.write_record(record)
        ends.append(buffer.tell())
    return buffer.getvalue(), ends


def pages(count: int) -> list[dict]:
    return [
        {
            "url": f"http://example.com/{i}",
            "http": http("200 OK", [("Content-Type", "text/html")]),
            "payload": f"<title>page {i}</title>".encode() * 20,
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("use_gzip", [False, True])
def test_responses_are_read_from_path_and_file_object(tmp_path, use_gzip):
    chunked_gzip_body = gzip.compress(b"<p>compressed and chunked</p>")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunked_gzip_body), chunked_gzip_body)
    records = [
        {
            "url": "http://example.com/a",
            "http": http("200 OK", [("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]),
            "payload": b"<title>A</title>",
        },
        {
            "url": "http://example.com/a",
            "type": "request",
            "http": StatusAndHeaders("GET /a HTTP/1.1", [("Host", "example.com")], is_http_request=True),
            "payload": b"",
        },
        {
            "url": "http://example.com/meta",
            "type": "metadata",
            "payload": b"fetchTimeMs: 12",
            "warc_content_type": "application/warc-fields",
        },
        {
            "url": "http://example.com/b",
            "http": http(
                "404 Not Found",
                [("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"), ("Content-Type", "text/html")],
            ),
            "payload": chunked,
        },
        {
            "url": "http://example.com/big.jpg",
            "http": http("200 OK", [("Content-Type", "image/jpeg")]),
            "payload": b"\xff\xd8 first MiB only",
            "warc_headers": {"WARC-Truncated": "length"},
        },
        {
            "url": "dns:example.com",
            "warc_content_type": "text/dns",
            "payload": b"20261128 example.com. 300 IN A 93.184.216.34",
        },
    ]
    data, _ = write_warc(use_gzip, records)
    path = tmp_path / ("crawl.warc.gz" if use_gzip else "crawl.warc")
    path.write_bytes(data)

    from_path = list(iter_warc_responses(path))
    from_stream = list(iter_warc_responses(io.BytesIO(data)))
    assert from_path == from_stream
    assert [(r.url, r.status, r.truncated) for r in from_path] == [
        ("http://example.com/a", 200, None),
        ("http://example.com/b", 404, None),
        ("http://example.com/big.jpg", 200, "length"),
    ]
    first, second = from_path[0], from_path[1]
    assert first == WarcResponse(
        url="http://example.com/a",
        status=200,
        headers={"content-type": "text/html", "set-cookie": "a=1, b=2"},
        body=b"<title>A</title>",
    )
    assert second.body == b"<p>compressed and chunked</p>"  # transfer- and content-encoding undone
    assert second.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("use_gzip", [False, True])
def test_every_truncation_point_is_reported_or_falls_on_a_record_end(use_gzip):
    """Cut the file at every byte: either the damage is reported as WARC_MALFORMED, or the cut lies within the
    few bytes that end a record (blank lines, gzip trailer) and every record before it came out whole."""
    records = pages(3)
    data, ends = write_warc(use_gzip, records)
    boundaries = [0, *ends]
    expected_bodies = [spec["payload"] for spec in records]
    silent_cuts = 0
    for cut in range(len(data)):
        got: list[bytes] = []
        try:
            for response in iter_warc_responses(io.BytesIO(data[:cut])):
                got.append(response.body)
        except Rejected as rejected:
            assert rejected.reason == Reason.WARC_MALFORMED.value
            assert f"after {len(got)} good records" in rejected.detail
        else:
            silent_cuts += 1
            assert boundaries[len(got)] - 16 <= cut <= boundaries[len(got)], f"cut at {cut} went unnoticed"
        assert got == expected_bodies[: len(got)], f"cut at {cut} yielded a damaged body"
    assert silent_cuts < 16 * len(boundaries)  # the exception is the rule, not the other way round


def test_truncated_file_yields_the_good_records_then_raises(tmp_path):
    data, ends = write_warc(True, pages(3))
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: ends[1] + (ends[2] - ends[1]) // 2])  # half of the third record
    got = []
    with pytest.raises(Rejected) as caught:
        for response in iter_warc_responses(path):
            got.append(response.url)
    assert got == ["http://example.com/0", "http://example.com/1"]
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert f"after 2 good records, at byte {ends[1]}" in caught.value.detail


def test_garbage_between_records_stops_with_a_clear_error():
    data, ends = write_warc(False, pages(2))
    damaged = data[: ends[0]] + b"this is not a WARC record\r\n\r\n" + data[ends[0] :]
    got = []
    with pytest.raises(Rejected) as caught:
        for response in iter_warc_responses(io.BytesIO(damaged)):
            got.append(response.url)
    assert got == ["http://example.com/0"]
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert "Invalid WARC record" in caught.value.detail


def test_not_a_warc_at_all():
    with pytest.raises(Rejected) as caught:
        list(iter_warc_responses(io.BytesIO(b"<html>definitely not a warc</html>")))
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert list(iter_warc_responses(io.BytesIO(b""))) == []  # an empty file holds no records, and no damage
