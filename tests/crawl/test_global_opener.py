"""The guard installed as urllib's process-global opener, exercised through the download production runs:
``UrlListDownloader`` calling img2dataset 1.47's ``download_image_with_retry``, its error strings mapped to reasons
by ``reason_of_download_error``. img2dataset is a pinned dependency: these tests are never skipped."""

from __future__ import annotations

import urllib.request

import img2dataset.downloader
import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import empty_record
from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig, UrlListInput
from mmcurate.stages.crawl.opener import global_guard
from mmcurate.stages.crawl.url_list import UrlListDownloader

LOCAL = ("127.0.0.0/8",)


@pytest.fixture
def downloader():
    """A set-up UrlListDownloader for a FetchConfig; urllib's previous opener is put back afterwards."""
    previous = urllib.request._opener  # type: ignore[attr-defined]

    def build(**fetch) -> UrlListDownloader:
        config = CrawlConfig(url_lists=(UrlListInput(path="unused.csv"),), fetch=FetchConfig(**fetch))
        stage = UrlListDownloader(config, "crawl")
        stage.setup()  # installs the guard for the process, as in a Ray worker
        return stage

    yield build
    urllib.request.install_opener(previous)


def download(stage: UrlListDownloader, url: str) -> bytes:
    record = empty_record(key="k", source="url_list", url=url, image_url=url)
    return stage.process(record)[0]["image"]


def refusal(stage: UrlListDownloader, url: str) -> Rejected:
    with pytest.raises(Rejected) as caught:
        download(stage, url)
    return caught.value


def test_production_downloads_with_img2dataset_through_the_guard(local_server, downloader):
    stage = downloader(allow_networks=LOCAL)
    assert stage._download is img2dataset.downloader.download_image_with_retry
    local_server.route("/cat.jpg", headers=[("Content-Type", "image/jpeg")], body=b"\xff\xd8 jpeg bytes")
    assert download(stage, local_server.url("/cat.jpg")) == b"\xff\xd8 jpeg bytes"
    assert local_server.requests == ["/robots.txt", "/cat.jpg"]  # robots.txt checked through the same guard


def test_a_loopback_address_is_refused_unless_allow_listed(local_server, downloader):
    local_server.route("/cat.jpg", body=b"jpeg")
    refused = refusal(downloader(), local_server.url("/cat.jpg"))
    assert refused.reason == Reason.ADDRESS_NOT_ALLOWED.value and "127.0.0.1 is loopback" in refused.detail
    assert local_server.requests == []


def test_the_byte_cap(local_server, downloader):
    local_server.route("/huge.jpg", body=b"x" * 5000, send_length=False)
    local_server.route("/declared.jpg", body=b"x" * 5000)
    stage = downloader(allow_networks=LOCAL, max_bytes=1000)
    assert refusal(stage, local_server.url("/huge.jpg")).reason == Reason.BODY_TOO_LARGE.value
    declared = refusal(stage, local_server.url("/declared.jpg"))
    assert (declared.reason, declared.detail) == (Reason.BODY_TOO_LARGE.value, "Content-Length 5000 > 1000")


def test_robots_txt(local_server, downloader):
    local_server.route("/robots.txt", headers=[("Content-Type", "text/plain")], body=b"User-agent: *\nDisallow: /private\n")
    local_server.route("/private/cat.jpg", body=b"jpeg")
    refused = refusal(downloader(allow_networks=LOCAL), local_server.url("/private/cat.jpg"))
    assert refused.reason == Reason.ROBOTS_DISALLOWED.value and "Disallow: /private" in refused.detail
    assert "/private/cat.jpg" not in local_server.requests


@pytest.mark.parametrize("value", ["noai", "mmcurate: noimageai"])
def test_x_robots_tag_noai(local_server, downloader, value):
    local_server.route("/cat.jpg", headers=[("X-Robots-Tag", value)], body=b"jpeg")
    refused = refusal(downloader(allow_networks=LOCAL), local_server.url("/cat.jpg"))
    assert refused.reason == Reason.X_ROBOTS_NOAI.value and value in refused.detail


def test_the_redirect_cap(local_server, downloader):
    local_server.redirect("/r1", "/r2")
    local_server.redirect("/r2", "/r3")
    local_server.redirect("/r3", "/cat.jpg")
    local_server.route("/cat.jpg", body=b"jpeg")
    stage = downloader(allow_networks=LOCAL, max_redirects=2)
    refused = refusal(stage, local_server.url("/r1"))
    assert (refused.reason, refused.detail) == (Reason.TOO_MANY_REDIRECTS.value, "more than 2 redirects")
    assert download(stage, local_server.url("/r2")) == b"jpeg"  # two hops are allowed


@pytest.mark.timeout(60)
def test_the_fetch_deadline(local_server, downloader):
    local_server.route("/slow.jpg", local_server.drip_head(pause_s=0.1, padding=3000))
    refused = refusal(downloader(allow_networks=LOCAL, timeout_s=5.0, deadline_s=0.5), local_server.url("/slow.jpg"))
    assert refused.reason == Reason.TIMEOUT.value and "deadline of 0.5 s" in refused.detail


def test_plain_urlopen_goes_through_the_guard_only_inside_its_scope(local_server):
    local_server.route("/cat.jpg", body=b"jpeg")
    with global_guard(FetchConfig()):
        with pytest.raises(Rejected) as caught:
            urllib.request.urlopen(local_server.url("/cat.jpg"), timeout=5)
        assert caught.value.reason == Reason.ADDRESS_NOT_ALLOWED.value
        with pytest.raises(Rejected) as caught:
            urllib.request.urlopen("file:///etc/passwd", timeout=5)
        assert caught.value.reason == Reason.SCHEME_NOT_ALLOWED.value
    # Control: the refusals came from the guard, not from the environment (stock handlers, proxies off).
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
    try:
        _, stream, error = img2dataset.downloader.download_image_with_retry(
            (7, local_server.url("/cat.jpg")), timeout=5, retries=0, user_agent_token="mmcurate",
            disallowed_header_directives=["noai"],
        )  # fmt: skip
    finally:
        urllib.request.install_opener(None)
    assert (stream.getvalue(), error) == (b"jpeg", None)
