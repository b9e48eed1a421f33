"""The guard installed as urllib's process-global opener, exercised through img2dataset's own downloader."""

from __future__ import annotations

import urllib.request

import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.fetch import FetchPolicy, install_global_opener

img2dataset_downloader = pytest.importorskip("img2dataset.downloader")


@pytest.fixture
def global_guard():
    """Installs a policy for one test and puts urllib's default opener back afterwards."""

    def install(policy: FetchPolicy) -> None:
        install_global_opener(policy)

    yield install
    urllib.request.install_opener(None)


def download(url: str) -> tuple[bytes | None, str | None]:
    # img2dataset 1.47: download_image(row=(key, url), timeout, user_agent_token, disallowed_header_directives)
    # calls urllib.request.urlopen(Request(url, headers={"User-Agent": ...}), timeout=timeout).read().
    key, stream, error = img2dataset_downloader.download_image(
        (7, url), timeout=5, user_agent_token="mmcurate", disallowed_header_directives=["noai", "noimageai"]
    )
    assert key == 7
    return (stream.getvalue() if stream is not None else None), error


def test_img2dataset_download_refuses_loopback_unless_allow_listed(local_server, global_guard):
    local_server.route("/cat.jpg", headers=[("Content-Type", "image/jpeg")], body=b"\xff\xd8 jpeg bytes")

    global_guard(FetchPolicy())
    body, error = download(local_server.url("/cat.jpg"))
    assert body is None and error is not None and error.startswith(Reason.ADDRESS_NOT_ALLOWED.value)
    assert local_server.requests == []

    global_guard(FetchPolicy(allow_networks=("127.0.0.0/8",)))
    body, error = download(local_server.url("/cat.jpg"))
    assert (body, error) == (b"\xff\xd8 jpeg bytes", None)
    assert local_server.requests == ["/robots.txt", "/cat.jpg"]  # robots.txt checked through the same guard


def test_img2dataset_download_meets_the_byte_cap_and_redirect_cap(local_server, global_guard):
    global_guard(FetchPolicy(allow_networks=("127.0.0.0/8",), max_bytes=1000, max_redirects=2))
    local_server.route("/huge.jpg", body=b"x" * 5000, send_length=False)
    body, error = download(local_server.url("/huge.jpg"))
    assert body is None and error.startswith(Reason.BODY_TOO_LARGE.value)

    local_server.redirect("/r1", "/r2")
    local_server.redirect("/r2", "/r3")
    local_server.redirect("/r3", "/huge.jpg")
    body, error = download(local_server.url("/r1"))
    assert body is None and error.startswith(Reason.TOO_MANY_REDIRECTS.value)


def test_plain_urlopen_goes_through_the_guard(local_server, global_guard):
    global_guard(FetchPolicy())
    with pytest.raises(Rejected) as caught:
        urllib.request.urlopen(local_server.url("/"), timeout=5)
    assert caught.value.reason == Reason.ADDRESS_NOT_ALLOWED.value
    with pytest.raises(Rejected) as caught:
        urllib.request.urlopen("file:///etc/passwd", timeout=5)
    assert caught.value.reason == Reason.SCHEME_NOT_ALLOWED.value


def test_without_the_guard_urlopen_would_have_fetched_loopback(local_server):
    """Control for the tests above: the refusal comes from the guard, not from the environment."""
    local_server.route("/cat.jpg", body=b"jpeg")
    # urllib's stock handlers, minus environment proxies (which would make this depend on the machine).
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
    try:
        body, error = download(local_server.url("/cat.jpg"))
    finally:
        urllib.request.install_opener(None)
    assert (body, error) == (b"jpeg", None)
