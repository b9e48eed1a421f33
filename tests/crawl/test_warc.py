"""Reading responses out of WARC files built in the test with warcio's own writer, intact and damaged."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.warc import iter_warc_responses, read_response_at

CAP = 1_000_000


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
    chunked_gzip_body = gzip.compress(b"<p>compressed and chunked</p>", mtime=0)
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

    from_path = list(iter_warc_responses(path, CAP))
    from_stream = list(iter_warc_responses(io.BytesIO(data), CAP))
    assert from_path == from_stream
    assert [(r.url, r.status, r.truncated) for r in from_path] == [
        ("http://example.com/a", 200, None),
        ("http://example.com/b", 404, None),
        ("http://example.com/big.jpg", 200, "length"),
    ]
    first, second = from_path[0], from_path[1]
    assert (first.url, first.status, first.headers, first.payload()) == (
        "http://example.com/a", 200, {"content-type": "text/html", "set-cookie": "a=1, b=2"}, b"<title>A</title>"
    )  # fmt: skip
    assert first.record_id.startswith("<urn:uuid:") and first.offset == 0
    assert second.payload() == b"<p>compressed and chunked</p>"  # transfer- and content-encoding undone
    assert second.headers["content-encoding"] == "gzip"
    # each record can be read again on its own, from where the iterator said it starts
    for response in from_path:
        assert read_response_at(path, response.offset, CAP) == response


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
            for response in iter_warc_responses(io.BytesIO(data[:cut]), CAP):
                got.append(response.payload())
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
        for response in iter_warc_responses(path, CAP):
            got.append(response.url)
    assert got == ["http://example.com/0", "http://example.com/1"]
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert f"after 2 good records, at byte {ends[1]}" in caught.value.detail


def test_garbage_between_records_stops_with_a_clear_error():
    data, ends = write_warc(False, pages(2))
    damaged = data[: ends[0]] + b"this is not a WARC record\r\n\r\n" + data[ends[0] :]
    got = []
    with pytest.raises(Rejected) as caught:
        for response in iter_warc_responses(io.BytesIO(damaged), CAP):
            got.append(response.url)
    assert got == ["http://example.com/0"]
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert "Invalid WARC record" in caught.value.detail


def test_not_a_warc_at_all():
    with pytest.raises(Rejected) as caught:
        list(iter_warc_responses(io.BytesIO(b"<html>definitely not a warc</html>"), CAP))
    assert caught.value.reason == Reason.WARC_MALFORMED.value
    assert list(iter_warc_responses(io.BytesIO(b""), CAP)) == []  # an empty file holds no records, and no damage


# ------------------------------------------------------------------------------------------------ payload decoding


def gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip stream of zeros: about a thousandth of its inflated size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(inflated_mib)) + compressor.flush()


def one_response(headers: list[tuple[str, str]], payload: bytes, url: str = "http://example.com/x") -> dict:
    return {"url": url, "http": http("200 OK", headers), "payload": payload}


def bodies(data: bytes, cap: int = CAP) -> list[tuple[bytes | None, tuple[str, str] | None]]:
    return [(r.body, r.refusal and (r.refusal[0], r.refusal[1][:40])) for r in iter_warc_responses(io.BytesIO(data), cap)]


def test_a_body_that_inflates_past_the_cap_is_refused_and_the_archive_reads_on():
    bomb = gzip_bomb(32)
    data, _ = write_warc(True, [
        one_response([("Content-Encoding", "gzip")], bomb),
        one_response([("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip")],
                     b"%x\r\n%s\r\n0\r\n\r\n" % (len(bomb), bomb)),  # one chunk: warcio inflated it in one call
        one_response([], b"after the bombs"),
    ])  # fmt: skip
    assert bodies(data) == [
        (None, ("body_too_large", f"decoded body exceeds {CAP} bytes")),
        (None, ("body_too_large", f"decoded body exceeds {CAP} bytes")),
        (b"after the bombs", None),
    ]
    assert bodies(data, cap=32 << 20)[0] == (bytes(32 << 20), None)  # exactly at the cap is fine


def test_an_identity_body_is_capped_too():
    data, _ = write_warc(False, [one_response([], b"x" * 101)])
    assert bodies(data, cap=100) == [(None, ("body_too_large", "decoded body exceeds 100 bytes"))]
    assert bodies(data, cap=101) == [(b"x" * 101, None)]


@pytest.mark.parametrize(
    "headers, payload, body",
    [
        ([("Transfer-Encoding", "chunked")], b"<html>stored dechunked</html>", b"<html>stored dechunked</html>"),
        ([("Content-Encoding", "gzip")], b"stored inflated", b"stored inflated"),
        ([("Content-Encoding", "deflate")], zlib.compress(b"zlib deflate"), b"zlib deflate"),
        ([("Content-Encoding", "deflate")], zlib.compress(b"raw deflate")[2:-4], b"raw deflate"),
        ([("Content-Encoding", "br")], b"\x1b\x00brotli", b"\x1b\x00brotli"),  # cannot undo: passed on as is
        ([("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n", b"abcde"),
        ([("Content-Encoding", "gzip")], gzip.compress(b"member", mtime=0) + b"trailing junk", b"member"),
    ],
    # fixed ids: xdist requires every worker to collect the same names, and payload bytes can carry a clock
    ids=["chunked", "gzip-stored-inflated", "zlib-deflate", "raw-deflate", "brotli", "chunked-extension-trailer",
         "gzip-trailing-junk"],
)
def test_payloads_archived_in_every_shape_tools_write(headers, payload, body):
    data, _ = write_warc(False, [one_response(headers, payload)])
    assert bodies(data) == [(body, None)]


def test_a_body_broken_part_way_is_damage_to_that_record_only():
    broken = gzip.compress(bytes(range(256)) * 400, mtime=0)
    broken = broken[:200] + b"\xff" * 50 + broken[250:]
    data, _ = write_warc(False, [one_response([("Content-Encoding", "gzip")], broken), one_response([], b"next")])
    (first, why), second = bodies(data)
    assert first is None and why[0] == "warc_malformed" and "does not inflate after" in why[1]
    assert second == (b"next", None)


def test_bodies_are_read_only_when_asked_for():
    data, _ = write_warc(False, [one_response([("Content-Type", "text/html")], b"<p>page"),
                                 one_response([("Content-Type", "image/jpeg")], b"jpeg", url="http://example.com/j")])
    wanted = list(iter_warc_responses(io.BytesIO(data), CAP, read_body=lambda url, h: h["content-type"] == "text/html"))
    assert [r.body for r in wanted] == [b"<p>page", None]
    with pytest.raises(ValueError, match="was not read"):
        wanted[1].payload()


def test_reading_at_an_offset_that_is_not_a_response_is_damage(tmp_path):
    data, ends = write_warc(True, [*pages(1), {"url": "dns:x", "warc_content_type": "text/dns", "payload": b"x"}])
    path = tmp_path / "a.warc.gz"
    path.write_bytes(data)
    with pytest.raises(Rejected) as caught:
        read_response_at(path, ends[0], CAP)
    assert caught.value.reason == Reason.WARC_MALFORMED.value and f"no HTTP response record at byte {ends[0]}" in (
        caught.value.detail
    )
