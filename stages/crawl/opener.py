"""The crawler's network guard: one urllib opener that every page, robots.txt and media download goes through.

What it enforces (``FetchConfig``), on every request *and every redirect hop*:
  scheme        only ``allowed_schemes`` (no file:, ftp:, data: — the opener has no handler for them)
  domain        the host equals or is a subdomain of one of ``allowed_domains`` (when given)
  address       the IP actually connected to must be public or inside ``allow_networks`` (``connection.py``)
  robots.txt    per (scheme, host, port), fetched through this same opener and cached (``respect_robots``)
  redirects     at most ``max_redirects`` hops; a URL seen before in the chain is a loop
  X-Robots-Tag  a refused directive on the final response refuses it (``optout.py``)
  body size     Content-Length above ``max_bytes`` is refused unread; reading stops at ``max_bytes + 1`` bytes
  time          ``timeout_s`` per socket operation; ``deadline_s`` for the whole fetch — robots.txt, every hop,
                connect, TLS, status line, headers and body — enforced on the socket (``connection.py``)
  politeness    a slot of the host's gate around every connection (robots.txt and each hop, each against its
                own host): per-host concurrency, delay, robots.txt Crawl-delay and the error budget, shared by
                every worker of the run (``politeness.py``). Time queued for a slot does not count against
                ``deadline_s``: the fetch's clock is paused while it waits.

Refusals raise ``Rejected`` from inside urllib, so plain ``urllib.request.urlopen`` callers (img2dataset's
``download_image``) see them as exceptions whose text starts with the reason code.

Environment proxies (``http_proxy``) are deliberately ignored: through a proxy the address check would vet the
proxy, not the site.
"""

from __future__ import annotations

import functools
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.stage_configs import FetchConfig
from mmcurate.stages.crawl.address import IPNetwork, host_allowed
from mmcurate.stages.crawl.body_cap import CappedResponse, refuse_declared_length
from mmcurate.stages.crawl.connection import (
    DeadlineExceeded,
    GuardedHTTPConnection,
    GuardedHTTPSConnection,
    deadline_ssl_context,
)
from mmcurate.stages.crawl.optout import header_refusal, robots_refusal
from mmcurate.stages.crawl.politeness import Gate, HostPoliteness
from mmcurate.stages.crawl.robots import RobotsCache, RobotsRules
from mmcurate.stages.crawl.robots_fetch import load_robots


class FetchClock:
    """One fetch's deadline, shared by every hop and by the robots.txt fetch made for it; moved on by the time
    spent queued for a politeness slot (one thread uses it: a fetch is one thread's call)."""

    def __init__(self, deadline_s: float):
        self.deadline = time.monotonic() + deadline_s  # time.monotonic() value

    def pause(self, seconds: float) -> None:
        self.deadline += seconds


@dataclass(frozen=True)
class FetchState:
    """What one fetch carries from hop to hop (urllib makes a new Request per redirect)."""

    clock: FetchClock
    chain: tuple[str, ...]  # URLs requested so far, fragment-free
    hops: int = 0
    for_robots: bool = False  # this is the robots.txt fetch made on behalf of a page

    @property
    def deadline(self) -> float:
        return self.clock.deadline


def fetch_state(request: urllib.request.Request, config: FetchConfig) -> FetchState:
    """The request's state; a request that has none starts a fetch now (its deadline starts counting)."""
    state = getattr(request, "mmcurate_state", None)
    if state is None:
        state = FetchState(FetchClock(config.deadline_s), chain=(request.full_url.split("#", 1)[0],))
        request.mmcurate_state = state  # type: ignore[attr-defined]
    return state


class _RequestGuard(urllib.request.BaseHandler):
    """Runs before every request, redirect hops included: scheme, domain, deadline, robots.txt."""

    handler_order = 100  # before the other processors

    def __init__(self, config: FetchConfig, politeness: HostPoliteness):
        self.config = config
        self.robots = RobotsCache()
        self.politeness = politeness

    def _check(self, request: urllib.request.Request) -> urllib.request.Request:
        if request.type not in self.config.allowed_schemes:
            raise Rejected(Reason.SCHEME_NOT_ALLOWED, request.full_url)
        host = urlsplit(request.full_url).hostname or ""
        if self.config.allowed_domains and not host_allowed(host, self.config.allowed_domains):
            raise Rejected(Reason.DOMAIN_NOT_ALLOWED, host)
        state = fetch_state(request, self.config)
        if time.monotonic() >= state.deadline:
            raise DeadlineExceeded(self.config.deadline_s, f"redirect hop {state.hops}")
        if self.config.respect_robots and not state.for_robots:
            rules = self._robots_for(request, state)
            refusal = robots_refusal(rules, request.full_url)
            if refusal is not None:
                raise refusal
            self.politeness.note_robots(request.full_url, rules)  # Crawl-delay: the host's delay, or refused
        return request

    http_request = _check
    https_request = _check

    def unknown_open(self, request: urllib.request.Request) -> None:
        raise Rejected(Reason.SCHEME_NOT_ALLOWED, request.full_url)

    def _robots_for(self, request: urllib.request.Request, state: FetchState) -> RobotsRules:
        parts = urlsplit(request.full_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        robots_url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/robots.txt"

        def open_robots() -> Any:
            assert self.parent is not None
            robots_request = urllib.request.Request(robots_url, headers={"User-Agent": self.config.user_agent})
            # the page's clock: a slow robots.txt cannot buy the page more time
            robots_state = FetchState(state.clock, (robots_url,), for_robots=True)
            robots_request.mmcurate_state = robots_state  # type: ignore[attr-defined]
            return self.parent.open(robots_request, timeout=self.config.timeout_s)

        key = (parts.scheme, (parts.hostname or "").lower(), port)
        return self.robots.get(key, lambda: load_robots(open_robots, self.config.user_agent_token))


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, config: FetchConfig, networks: tuple[IPNetwork, ...], politeness: HostPoliteness):
        super().__init__()
        self.config, self.networks, self.politeness = config, networks, politeness

    def http_open(self, request: urllib.request.Request) -> Any:
        state = fetch_state(request, self.config)

        def do_open() -> Any:  # the deadline is read after the wait for a slot, which moved it on
            connection = functools.partial(GuardedHTTPConnection, allow_networks=self.networks,
                                           deadline=state.deadline, deadline_s=self.config.deadline_s)  # fmt: skip
            return self.do_open(connection, request)

        return self.politeness.open(request.full_url, state.clock, do_open)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, config: FetchConfig, networks: tuple[IPNetwork, ...], politeness: HostPoliteness):
        super().__init__(context=deadline_ssl_context())
        self.config, self.networks, self.politeness = config, networks, politeness

    def https_open(self, request: urllib.request.Request) -> Any:
        state = fetch_state(request, self.config)

        def do_open() -> Any:
            connection = functools.partial(GuardedHTTPSConnection, allow_networks=self.networks,
                                           deadline=state.deadline, deadline_s=self.config.deadline_s)  # fmt: skip
            return self.do_open(connection, request, context=self._context)  # type: ignore[attr-defined]

        return self.politeness.open(request.full_url, state.clock, do_open)


class _CappedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Counts hops and detects loops itself, raising TOO_MANY_REDIRECTS instead of urllib's generic HTTPError."""

    def __init__(self, config: FetchConfig):
        self.config = config
        # urllib's own counters must never fire before ours.
        self.max_redirections = config.max_redirects + 1
        self.max_repeats = config.max_redirects + 1

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        # The redirect body is never wanted; urllib would read it whole, uncapped.
        fp.close()
        location = headers.get("location") or headers.get("uri")
        if location:
            scheme = urlsplit(location).scheme.lower()
            if scheme and scheme not in self.config.allowed_schemes:
                raise Rejected(Reason.SCHEME_NOT_ALLOWED, f"redirect to {location}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        state = fetch_state(req, self.config)
        target = newurl.split("#", 1)[0]
        if target in state.chain:
            raise Rejected(Reason.TOO_MANY_REDIRECTS, f"redirect loop back to {target}")
        if state.hops + 1 > self.config.max_redirects:
            raise Rejected(Reason.TOO_MANY_REDIRECTS, f"more than {self.config.max_redirects} redirects")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.mmcurate_state = replace(state, hops=state.hops + 1, chain=(*state.chain, target))
        return new


class _ResponseGuard(urllib.request.BaseHandler):
    """Runs after HTTPErrorProcessor (order 1000), so it sees only the final 2xx response: X-Robots-Tag, body cap."""

    handler_order = 1100

    def __init__(self, config: FetchConfig):
        self.config = config

    def _finish(self, request: urllib.request.Request, response: Any) -> Any:
        if isinstance(response, CappedResponse):  # already finished by the redirect hop that produced it
            return response
        if fetch_state(request, self.config).for_robots:
            return response  # read within ROBOTS_MAX_BYTES by its loader; its X-Robots-Tag says nothing of pages
        values = response.headers.get_all("X-Robots-Tag") or []
        refusal = header_refusal(values, self.config.user_agent_token, self.config.disallowed_header_directives)
        if refusal is not None:
            response.close()
            raise refusal
        refuse_declared_length(response, self.config.max_bytes)
        return CappedResponse(response, self.config.max_bytes)

    http_response = _finish
    https_response = _finish


def build_opener(config: FetchConfig, gate: Gate | None = None) -> urllib.request.OpenerDirector:
    """An opener with only the guarded handlers: no proxy, file, ftp or data handlers (see module docstring).

    ``gate``: the politeness gate; default this process's (``politeness.process_gate``: the run's gate actors
    under Ray, else one in-process gate)."""
    networks = config.networks()
    politeness = HostPoliteness(config, gate)
    opener = urllib.request.OpenerDirector()
    for handler in (
        _RequestGuard(config, politeness),
        _GuardedHTTPHandler(config, networks, politeness),
        _GuardedHTTPSHandler(config, networks, politeness),
        _CappedRedirectHandler(config),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _ResponseGuard(config),
    ):
        opener.add_handler(handler)
    # A request without its own User-Agent (urllib's default is "Python-urllib/3.x") gets ours.
    opener.addheaders = [("User-agent", config.user_agent)]
    return opener


_install_lock = threading.Lock()


def install_global_opener(config: FetchConfig, gate: Gate | None = None) -> urllib.request.OpenerDirector:
    """Make every plain ``urllib.request.urlopen(...)`` in this process go through the guard.

    Process-global, so call it only in a process that exists to download (a Ray actor's setup), or use
    ``global_guard`` to put the previous opener back. A process spawned later does not inherit it.
    ``urlopen(..., context=...)`` bypasses installed openers (urllib builds a fresh one), so callers that pass an
    SSL context are not guarded; img2dataset 1.47 passes none.
    """
    opener = build_opener(config, gate)
    with _install_lock:
        urllib.request.install_opener(opener)
    return opener


@contextmanager
def global_guard(config: FetchConfig, gate: Gate | None = None) -> Iterator[urllib.request.OpenerDirector]:
    """``install_global_opener`` for the duration of a ``with`` block."""
    with _install_lock:
        previous = urllib.request._opener  # type: ignore[attr-defined]  # urllib has no public getter
    try:
        yield install_global_opener(config, gate)
    finally:
        with _install_lock:
            urllib.request.install_opener(previous)
