"""The fetch guard against a real HTTP server on 127.0.0.1: every refusal path, and the happy path."""

from __future__ import annotations

import socket
import threading

import pydantic
import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.stage_configs import FetchConfig
from mmcurate.stages.crawl.address import address_refusal, host_allowed
from mmcurate.stages.crawl.body_cap import CappedResponse
from mmcurate.stages.crawl.fetch import Fetcher
from mmcurate.stages.crawl.optout import x_robots_directives

LOCAL = ("127.0.0.0/8",)


def local_fetcher(**overrides) -> Fetcher:
    return Fetcher(FetchConfig(allow_networks=LOCAL, **overrides))


def rejection(fetcher: Fetcher, url: str, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as caught:
        fetcher.fetch(url, **kwargs)
    return caught.value


# ------------------------------------------------------------------------------------------------ happy path


def test_fetch_returns_body_headers_and_final_url_after_redirects(local_server):
    local_server.route(
        "/page", headers=[("Content-Type", "text/html; charset=utf-8"), ("X-Thing", "a")], body=b"<p>hi</p>"
    )
    local_server.redirect("/old", "/page", status=301)
    result = local_fetcher().fetch(local_server.url("/old"))
    assert (result.status, result.body, result.url) == (200, b"<p>hi</p>", local_server.url("/page"))
    assert result.headers["x-thing"] == "a"
    assert result.content_type == "text/html; charset=utf-8"
    assert result.media_type == "text/html"
    assert set(local_server.user_agents) == {"mmcurate/0.1"}  # robots.txt and both hops announce us


# ------------------------------------------------------------------------------------------------ HTTP status


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_status_is_rejected_with_the_code(local_server, status):
    local_server.route("/x", status=status, body=b"error page")
    refused = rejection(local_fetcher(), local_server.url("/x"))
    assert (refused.reason, refused.detail) == (Reason.HTTP_ERROR.value, str(status))


# ------------------------------------------------------------------------------------------------ redirects


def test_redirect_loop_is_refused(local_server):
    local_server.redirect("/a", "/b")
    local_server.redirect("/b", "/a")
    refused = rejection(local_fetcher(), local_server.url("/a"))
    assert refused.reason == Reason.TOO_MANY_REDIRECTS.value and "loop" in refused.detail
    assert local_server.requests.count("/a") == 1  # noticed before fetching /a a second time


def test_redirect_cap_allows_exactly_max_redirects(local_server):
    for hop in range(6):
        local_server.redirect(f"/hop{hop}", f"/hop{hop + 1}")
    local_server.route("/hop6", body=b"end")
    assert local_fetcher(max_redirects=6).fetch(local_server.url("/hop0")).body == b"end"
    refused = rejection(local_fetcher(max_redirects=5), local_server.url("/hop0"))
    assert refused.reason == Reason.TOO_MANY_REDIRECTS.value
    assert local_server.requests.count("/hop6") == 1  # only the first, allowed, run reached the end


def test_redirect_to_an_address_outside_the_allow_list_is_refused(local_server):
    # 127.0.0.2 is loopback too, but only 127.0.0.1 is allow-listed: the hop must meet the address check.
    local_server.redirect("/go", f"http://127.0.0.2:{local_server.port}/inside")
    narrow = Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",), respect_robots=False))
    refused = rejection(narrow, local_server.url("/go"))
    assert refused.reason == Reason.ADDRESS_NOT_ALLOWED.value and "127.0.0.2" in refused.detail
    # Control: with 127.0.0.0/8 allowed the hop is attempted (nothing listens on 127.0.0.2, so it fails later).
    wide = Fetcher(FetchConfig(allow_networks=LOCAL, respect_robots=False))
    assert rejection(wide, local_server.url("/go")).reason == Reason.CONNECTION_ERROR.value


def test_redirect_to_a_file_url_is_refused(local_server):
    local_server.redirect("/go", "file:///etc/passwd")
    assert rejection(local_fetcher(), local_server.url("/go")).reason == Reason.SCHEME_NOT_ALLOWED.value


# ------------------------------------------------------------------------------------------------ time


def test_slow_drip_body_hits_the_fetch_deadline(local_server):
    # A byte every 50 ms never trips the 5 s per-read timeout; only the 0.3 s whole-fetch deadline stops it.
    local_server.route("/drip", local_server.drip(chunks=400, pause_s=0.05))
    refused = rejection(local_fetcher(timeout_s=5.0, deadline_s=0.3, respect_robots=False), local_server.url("/drip"))
    assert refused.reason == Reason.TIMEOUT.value and "deadline" in refused.detail


@pytest.mark.timeout(60)  # the old guard checked its deadline only between body reads: ~300 s here
def test_headers_dripped_byte_by_byte_hit_the_fetch_deadline(local_server):
    # 3000 header bytes at 0.1 s each: every recv returns within the 5 s socket timeout, for five minutes.
    local_server.route("/slow-head", local_server.drip_head(pause_s=0.1, padding=3000))
    refused = rejection(local_fetcher(timeout_s=5.0, deadline_s=0.5, respect_robots=False), local_server.url("/slow-head"))
    assert refused.reason == Reason.TIMEOUT.value
    assert "deadline of 0.5 s passed during the response" in refused.detail


@pytest.mark.timeout(60)
def test_a_dripping_robots_txt_spends_the_page_deadline_and_is_not_cached_as_a_refusal(local_server):
    local_server.route("/robots.txt", local_server.drip_head(pause_s=0.1, padding=3000))
    local_server.route("/page", body=b"ok")
    fetcher = local_fetcher(timeout_s=5.0, deadline_s=0.5)
    refused = rejection(fetcher, local_server.url("/page"))
    assert refused.reason == Reason.TIMEOUT.value  # the page timed out; the site did not say no
    local_server.route("/robots.txt", status=404)
    assert fetcher.fetch(local_server.url("/page")).body == b"ok"  # so robots.txt is asked again, not remembered


@pytest.fixture
def tls_dripper():
    """A TCP server that answers every TLS ClientHello with one byte per 0.1 s of a ServerHello that never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)  # the ClientHello
            for byte in b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000:  # handshake record of 16 KiB
                if stopping.wait(0.1):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stopping.set()
    listener.close()


@pytest.mark.timeout(60)  # the old guard gave the handshake timeout_s (60 s here) whatever the deadline said
def test_a_dripping_tls_handshake_hits_the_fetch_deadline(tls_dripper):
    fetcher = local_fetcher(timeout_s=60.0, deadline_s=0.5, respect_robots=False)
    refused = rejection(fetcher, f"https://127.0.0.1:{tls_dripper}/")
    assert refused.reason == Reason.TIMEOUT.value
    assert "during the TLS handshake" in refused.detail


def test_silent_server_hits_the_read_timeout(local_server):
    local_server.route("/stall", local_server.stall(30))
    refused = rejection(local_fetcher(timeout_s=0.3, respect_robots=False), local_server.url("/stall"))
    assert refused.reason == Reason.TIMEOUT.value


# ------------------------------------------------------------------------------------------------ body size


def test_declared_oversize_body_is_refused_before_reading(local_server):
    local_server.route("/big", body=b"x" * 5000)
    refused = rejection(local_fetcher(max_bytes=1000), local_server.url("/big"))
    assert refused.reason == Reason.BODY_TOO_LARGE.value and "Content-Length 5000" in refused.detail


def test_undeclared_oversize_body_is_refused_while_reading(local_server):
    local_server.route("/big", body=b"x" * 5000, send_length=False)
    refused = rejection(local_fetcher(max_bytes=1000), local_server.url("/big"))
    assert refused.reason == Reason.BODY_TOO_LARGE.value and "exceeds 1000" in refused.detail


def test_body_of_exactly_max_bytes_is_fetched(local_server):
    local_server.route("/exact", body=b"x" * 1000, send_length=False)
    assert len(local_fetcher(max_bytes=1000).fetch(local_server.url("/exact")).body) == 1000


class _CountingResponse:
    """Stands in for http.client.HTTPResponse: an endless body that counts what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0
        self.closed = False

    def read1(self, size: int) -> bytes:
        self.taken += size
        return b"y" * size

    def close(self) -> None:
        self.closed = True


def test_capped_reader_takes_at_most_one_byte_past_the_cap():
    raw = _CountingResponse()
    capped = CappedResponse(raw, max_bytes=100_000)  # type: ignore[arg-type]
    with pytest.raises(Rejected) as caught:
        capped.read()
    assert caught.value.reason == Reason.BODY_TOO_LARGE.value
    assert (raw.taken, raw.closed) == (100_001, True)


def test_capped_reader_partial_reads_and_readinto_count_towards_the_cap():
    raw = _CountingResponse()
    capped = CappedResponse(raw, max_bytes=10)  # type: ignore[arg-type]
    assert capped.read(4) == b"yyyy"
    buffer = bytearray(6)
    assert capped.readinto(buffer) == 6
    with pytest.raises(Rejected) as caught:
        capped.read(1)
    assert caught.value.reason == Reason.BODY_TOO_LARGE.value


# ------------------------------------------------------------------------------------------------ robots.txt


def robots(local_server, text: bytes, status: int = 200) -> None:
    local_server.route("/robots.txt", status=status, headers=[("Content-Type", "text/plain")], body=text)


def test_robots_disallow_names_the_rule_and_is_fetched_once_per_origin(local_server):
    robots(local_server, b"User-agent: *\nAllow: /\nDisallow: /private\n")
    local_server.route("/public", body=b"ok")
    fetcher = local_fetcher()
    refused = rejection(fetcher, local_server.url("/private/page"))
    assert refused.reason == Reason.ROBOTS_DISALLOWED.value
    assert "Disallow: /private (user-agent: *)" in refused.detail
    assert fetcher.fetch(local_server.url("/public")).body == b"ok"
    assert local_server.requests.count("/robots.txt") == 1
    assert "/private/page" not in local_server.requests


def test_robots_applies_to_every_redirect_hop(local_server):
    robots(local_server, b"User-agent: *\nDisallow: /private\n")
    local_server.redirect("/public", "/private/x")
    refused = rejection(local_fetcher(), local_server.url("/public"))
    assert refused.reason == Reason.ROBOTS_DISALLOWED.value
    assert "/private/x" not in local_server.requests


@pytest.mark.parametrize("status", [500, 503, 429])
def test_robots_server_error_disallows_everything(local_server, status):
    robots(local_server, b"oops", status=status)
    local_server.route("/page", body=b"ok")
    refused = rejection(local_fetcher(), local_server.url("/page"))
    assert refused.reason == Reason.ROBOTS_DISALLOWED.value and f"answered {status}" in refused.detail
    assert "/page" not in local_server.requests


def test_robots_timeout_disallows_everything(local_server):
    local_server.route("/robots.txt", local_server.stall(30))
    local_server.route("/page", body=b"ok")
    refused = rejection(local_fetcher(timeout_s=0.3), local_server.url("/page"))
    assert refused.reason == Reason.ROBOTS_DISALLOWED.value and "unreachable" in refused.detail


def test_robots_404_allows_everything(local_server):
    local_server.route("/page", body=b"ok")  # /robots.txt is unrouted: 404
    assert local_fetcher().fetch(local_server.url("/page")).body == b"ok"
    assert local_server.requests == ["/robots.txt", "/page"]


def test_non_utf8_robots_is_still_obeyed(local_server):
    robots(local_server, "# Réglages en Latin-1\nUser-agent: *\nDisallow: /privé\nDisallow: /x\n".encode("latin-1"))
    assert rejection(local_fetcher(), local_server.url("/x/1")).reason == Reason.ROBOTS_DISALLOWED.value


def test_robots_can_be_switched_off(local_server):
    robots(local_server, b"User-agent: *\nDisallow: /\n")
    local_server.route("/page", body=b"ok")
    assert local_fetcher(respect_robots=False).fetch(local_server.url("/page")).body == b"ok"
    assert "/robots.txt" not in local_server.requests


# ------------------------------------------------------------------------------------------------ X-Robots-Tag


@pytest.mark.parametrize(
    "header_values, refused",
    [
        (["noai"], True),
        (["noindex, noimageai"], True),
        (["noindex", "NoAI"], True),  # several headers, any case
        (["mmcurate: noai"], True),  # scoped to us
        (["otherbot: noai"], False),  # scoped to someone else
        (["otherbot: noindex, mmcurate: noai"], True),  # scope switches inside one value
        (["mmcurate: noindex", "otherbot: noai"], False),
        (["unavailable_after: 25 Jun 2030 15:00:00 PST"], False),  # a valued directive, not a scope
        (["noindex, nofollow"], False),
    ],
)
def test_x_robots_tag(local_server, header_values, refused):
    local_server.route("/img", headers=[("X-Robots-Tag", v) for v in header_values], body=b"img")
    fetcher = local_fetcher()
    if refused:
        assert rejection(fetcher, local_server.url("/img")).reason == Reason.X_ROBOTS_NOAI.value
    else:
        assert fetcher.fetch(local_server.url("/img")).body == b"img"


def test_x_robots_directive_parsing_keeps_only_ours():
    assert x_robots_directives(["otherbot: noai, noimageai", "mmcurate: NoIndex"], "mmcurate") == {"noindex"}
    assert x_robots_directives(["noai", "MMCurate: noimageai"], "mmcurate") == {"noai", "noimageai"}


# ------------------------------------------------------------------------------------------------ content type


def test_unexpected_content_type_is_refused(local_server):
    local_server.route("/page", headers=[("Content-Type", "text/html")], body=b"<p>")
    fetcher = local_fetcher()
    assert rejection(fetcher, local_server.url("/page"), accept=("image/",)).reason == Reason.CONTENT_TYPE.value
    assert fetcher.fetch(local_server.url("/page"), accept=("image/", "text/html")).body == b"<p>"


# ------------------------------------------------------------------------------------------------ address, domain, scheme


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"])
def test_loopback_is_refused_without_allow_list_in_any_spelling(local_server, host):
    refused = rejection(Fetcher(FetchConfig()), local_server.url("/page", host=host))
    assert refused.reason == Reason.ADDRESS_NOT_ALLOWED.value
    assert local_server.requests == []  # not even robots.txt was fetched


def test_https_goes_through_the_same_address_check(local_server):
    # Refused before any TLS handshake, so no certificate is needed to show the HTTPS handler is guarded.
    refused = rejection(Fetcher(FetchConfig()), f"https://127.0.0.1:{local_server.port}/")
    assert refused.reason == Reason.ADDRESS_NOT_ALLOWED.value and local_server.requests == []


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1",
        "ff02::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(ip):
    assert address_refusal(ip) is not None


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(ip):
    assert address_refusal(ip) is None


def test_allow_list_covers_mapped_addresses():
    networks = FetchConfig(allow_networks=("10.0.0.0/8",)).networks()
    assert address_refusal("10.9.9.9", networks) is None
    assert address_refusal("::ffff:10.9.9.9", networks) is None
    assert address_refusal("192.168.0.1", networks) is not None


def test_bad_cidr_fails_when_the_config_is_loaded():
    with pytest.raises(pydantic.ValidationError, match="not a CIDR"):
        FetchConfig(allow_networks=("10.0.0.0/33",))
    with pytest.raises(pydantic.ValidationError, match="not a host name"):
        FetchConfig(allowed_domains=("https://example.com/",))
    with pytest.raises(pydantic.ValidationError):
        FetchConfig(allowed_schemes=("http", "ftp"))


def test_domain_outside_allowed_domains_is_refused(local_server):
    refused = rejection(local_fetcher(allowed_domains=("example.com",)), local_server.url("/"))
    assert refused.reason == Reason.DOMAIN_NOT_ALLOWED.value and local_server.requests == []


def test_domain_matching_is_by_label():
    allowed = ("example.com",)
    assert host_allowed("example.com", allowed) and host_allowed("img.Example.com.", allowed)
    assert not host_allowed("badexample.com", allowed) and not host_allowed("example.com.evil.net", allowed)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "data:text/plain,hi", "nonsense"])
def test_other_schemes_are_refused(url):
    assert rejection(Fetcher(FetchConfig()), url).reason == Reason.SCHEME_NOT_ALLOWED.value


def test_refused_connection_is_a_connection_error(local_server):
    port = local_server.port
    local_server.httpd.server_close()  # nothing listens on the port any more
    refused = rejection(local_fetcher(respect_robots=False), f"http://127.0.0.1:{port}/")
    assert refused.reason == Reason.CONNECTION_ERROR.value
