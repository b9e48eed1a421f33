"""The page crawler's fetcher stays on the crawl's hosts across redirects (a served site on 127.0.0.1)."""

from __future__ import annotations

import pytest

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import CrawlConfig, FetchConfig
from mmcurate.stages.crawl.address import crawl_domains, narrow_domains
from mmcurate.stages.crawl.pages import PageFetcher

HTML = [("Content-Type", "text/html")]


def page_fetcher(local_server, **crawl) -> PageFetcher:
    config = CrawlConfig(
        seeds=(local_server.url("/start"),), fetch=FetchConfig(allow_networks=("127.0.0.0/8",)), **crawl
    )
    return PageFetcher(config)


def test_a_redirect_off_the_seeds_hosts_is_refused(local_server):
    local_server.route("/start", body=b"<a href='/next'>next</a>", headers=HTML)
    local_server.redirect("/away", local_server.url("/start", host="localhost"))  # same server, another host name
    local_server.redirect("/stay", "/start")
    fetcher = page_fetcher(local_server)
    away = fetcher.page(local_server.url("/away"), 0)
    assert (away["reason"], away["detail"]) == (Reason.DOMAIN_NOT_ALLOWED.value, "localhost")
    assert local_server.requests.count("/start") == 0  # the hop was refused before it was made
    stay = fetcher.page(local_server.url("/stay"), 0)
    assert (stay["reason"], stay["final_url"]) == (None, local_server.url("/start"))
    assert stay["links"] == [local_server.url("/next")]


def test_allowed_domains_widen_the_crawl_beyond_the_seeds(local_server):
    local_server.route("/start", body=b"<p>hi</p>", headers=HTML)
    local_server.redirect("/away", local_server.url("/start", host="localhost"))
    fetcher = page_fetcher(local_server, allowed_domains=("127.0.0.1", "localhost"))
    assert fetcher.page(local_server.url("/away"), 0)["reason"] is None


def test_crawl_and_fetch_domains_narrow_each_other():
    config = CrawlConfig(seeds=("https://Example.com./a", "https://img.example.com/b"))
    assert crawl_domains(config) == ("example.com", "img.example.com")
    assert narrow_domains(("example.com",), ()) == ("example.com",)
    assert narrow_domains(("example.com",), ("img.example.com", "other.org")) == ("img.example.com",)
    assert narrow_domains(("img.example.com",), ("example.com",)) == ("img.example.com",)
    with pytest.raises(ValueError, match="no host lies inside both"):
        narrow_domains(("example.com",), ("other.org",))
