"""The demo server: static files with the right types and headers, and each failure mode it must produce."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest

from mmcurate.pipeline.demo.server import serve_site
from mmcurate.pipeline.demo.site.labels import BASE_URL_TOKEN, HEADERS_SIDECAR


def fetch(server, path: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request, no redirect following (http.client), so 302s are observed as such."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "suffix,content_type",
    [
        (".flac", "audio/flac"),
        (".wav", "audio/wav"),
        (".vtt", "text/vtt"),
        (".srt", "application/x-subrip"),
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
    ],
)
def test_static_media_bytes_and_content_types(server, demo_site, ground_truth, suffix, content_type):
    urls = [
        u
        for r in ground_truth
        if r["label"] == "clean"
        for u in (r["url"], r["subtitle_url"])
        if u and u.endswith(suffix)
    ]
    assert urls
    for url in urls:
        status, headers, body = fetch(server, url)
        assert status == 200 and headers["content-type"] == content_type
        assert body == (demo_site.site_dir / url.lstrip("/")).read_bytes()
        assert int(headers["content-length"]) == len(body)


def test_html_is_served_without_charset_and_with_absolute_links_rewritten(server, demo_site):
    status, headers, body = fetch(server, "/index.html")
    assert status == 200 and headers["content-type"] == "text/html"
    assert BASE_URL_TOKEN.encode() in (demo_site.site_dir / "index.html").read_bytes()
    assert BASE_URL_TOKEN.encode() not in body and f'href="{server.base_url}/'.encode() in body
    assert fetch(server, "/")[2] == body


def test_noai_headers_come_from_the_sidecar(server, demo_site, ground_truth):
    checked = Counter()
    for r in ground_truth:
        if r["kind"] == "image" and r["label"] in ("noai", "clean") and r["file_exists"]:
            status, headers, _ = fetch(server, r["url"], method="HEAD")
            assert status == 200
            assert ("noai" in headers.get("x-robots-tag", "")) == (r["label"] == "noai"), r["url"]
            checked[r["label"]] += 1
    sidecar = json.loads((demo_site.site_dir / HEADERS_SIDECAR).read_text())
    assert checked["noai"] == len(sidecar) >= 1  # every URL the sidecar names was served with its header
    assert checked["clean"] >= 1


def test_sidecar_dot_files_and_traversal_are_not_served(server):
    for path in (f"/{HEADERS_SIDECAR}", "/../ground_truth.parquet", "/images/../../url_list.csv", "/nope.jpg"):
        assert fetch(server, path)[0] == 404, path


def test_robots_txt(server):
    status, headers, body = fetch(server, "/robots.txt")
    assert status == 200 and headers["content-type"] == "text/plain"
    assert b"Disallow: /private/" in body


def test_every_reference_gets_its_expected_status(server, ground_truth):
    """The ``expected_status`` column is what the server really answers (the /slow/ and off-site rows aside)."""
    checked = 0
    for r in ground_truth:
        if not r["url"].startswith("/") or r["expected_status"] is None:
            continue
        method = "HEAD" if r["label"] == "too_large" else "GET"  # the body of /huge/ is tested below
        assert fetch(server, r["url"], method=method)[0] == r["expected_status"], r
        checked += 1
    assert checked == sum(1 for r in ground_truth if r["url"].startswith("/")) - 1  # all but the /slow/ one


def test_redirect_loop_never_settles(server, ground_truth):
    (loop,) = [r["url"] for r in ground_truth if r["label"] == "redirect_loop"]
    status, headers, _ = fetch(server, loop)
    assert status == 302 and headers["location"] != loop
    status, headers, _ = fetch(server, headers["location"])
    assert status == 302 and headers["location"] == loop
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
        urllib.request.urlopen(server.url(loop), timeout=10)


def test_slow_url_stalls_past_a_short_timeout(server, ground_truth):
    (slow,) = [r["url"] for r in ground_truth if r["label"] == "timeout"]
    with pytest.raises(TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        fetch(server, slow, timeout=0.5)  # the server waits 5 s before its first byte


def test_server_error(server, ground_truth):
    (url,) = [r["url"] for r in ground_truth if r["label"] == "server_error"]
    assert fetch(server, url)[0] == 500


def test_huge_body_streams_without_length_and_survives_hangups(demo_site):
    with serve_site(demo_site.root, huge_bytes=3 * 1024 * 1024 + 5) as small:
        status, headers, body = fetch(small, "/huge/x.jpg")
        assert status == 200 and "content-length" not in headers and len(body) == 3 * 1024 * 1024 + 5
        # a client that stops reading at its cap and hangs up must not take the server down
        conn = http.client.HTTPConnection(small.host, small.port, timeout=10)
        conn.request("GET", "/huge/y.jpg")
        assert len(conn.getresponse().read(100_000)) == 100_000
        conn.close()
        assert fetch(small, "/robots.txt")[0] == 200


def test_counts_every_request_and_logs_each_answer(demo_site):
    with serve_site(demo_site.root) as fresh:
        assert fresh.request_count == 0 and fresh.request_log == []
        fetch(fresh, "/index.html")
        fetch(fresh, "/index.html?x=1", method="HEAD")
        fetch(fresh, "/missing.jpg")
        assert fresh.request_count == 3
        assert [(r.method, r.path, r.status) for r in fresh.request_log] == [
            ("GET", "/index.html", 200),
            ("HEAD", "/index.html?x=1", 200),
            ("GET", "/missing.jpg", 404),
        ]
        assert fresh.requests_for("/index.html") == 2 and fresh.requests_for("/robots.txt") == 0


def test_request_count_is_exact_under_concurrency(demo_site):
    statuses: list[int] = []  # list.append is atomic: every client thread records what it got back

    def client() -> None:
        for _ in range(10):
            statuses.append(fetch(fresh, "/robots.txt")[0])

    with serve_site(demo_site.root) as fresh:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 80  # a client thread that died would leave fewer (its exception is not raised)
        assert fresh.request_count == 80 == fresh.requests_for("/robots.txt")


def test_refuses_to_bind_anything_but_ipv4_loopback(demo_site):
    for host in ("0.0.0.0", "::1", "192.168.1.10"):
        with pytest.raises(ValueError, match="only binds IPv4 loopback"):
            serve_site(demo_site.root, host=host)


def test_needs_a_built_site(tmp_path):
    with pytest.raises(FileNotFoundError, match="no demo site under"):
        serve_site(tmp_path)


def test_stop_wakes_stalled_requests_and_closes_the_port(demo_site):
    running = serve_site(demo_site.root, slow_seconds=600)
    outcome: list[BaseException | int] = []

    def stalled() -> None:
        try:
            outcome.append(fetch(running, "/slow/x.jpg", timeout=600)[0])
        except Exception as exc:  # noqa: BLE001 (the test inspects whatever happened)
            outcome.append(exc)

    client = threading.Thread(target=stalled)
    client.start()
    for _ in range(60_000):  # until the request has arrived and is stalling
        if running.request_count:
            break
        threading.Event().wait(0.01)
    assert running.request_count == 1
    running.stop()
    running.stop()  # idempotent
    client.join(timeout=60)  # far below the 600 s stall: stop() ended it, not the clock
    assert not client.is_alive()
    # dropped, never answered: the connection closes with no status line
    assert len(outcome) == 1 and isinstance(outcome[0], http.client.RemoteDisconnected), outcome
    with pytest.raises(ConnectionRefusedError):
        fetch(running, "/index.html", timeout=5)
