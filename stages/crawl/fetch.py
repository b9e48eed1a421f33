"""The crawler's network guard: one urllib opener that every page, robots.txt and media download goes through.

What the guard enforces, on every request *and every redirect hop*:
  scheme       only ``FetchPolicy.allowed_schemes`` (no file:, ftp:, data: — the opener has no handler for them)
  domain       host equals or is a subdomain of one of ``allowed_domains`` (when given)
  address      the IP actually connected to must be public or inside ``allow_networks``: the connection resolves
               the host itself and connects to the checked address (no second DNS lookup to race), so DNS
               rebinding, ``http://2130706433/`` and redirects to 10.0.0.1 all meet the same check
  robots.txt   per (scheme, host, port), fetched through this same opener and cached (``respect_robots``)
  redirects    at most ``max_redirects`` hops; a URL seen before in the chain is a loop
  body size    Content-Length above ``max_bytes`` is refused unread; reading stops at ``max_bytes + 1`` bytes
  time         ``timeout_s`` per socket operation, and ``deadline_s`` for the whole fetch so a server that drips
               one byte per ``timeout_s - ε`` cannot hold a worker forever (checked between reads, so a fetch
               ends at most ``deadline_s + timeout_s`` after it began)

Refusals raise ``Rejected`` from inside urllib, so plain ``urllib.request.urlopen`` callers (img2dataset's
``download_image``) see them as exceptions too. ``Fetcher.fetch`` additionally maps urllib's own errors
(HTTPError, timeouts, resets) to ``Rejected`` and applies X-Robots-Tag and an optional media-type check.

Environment proxies (``http_proxy``) are deliberately ignored: through a proxy the address check would vet the
proxy, not the site.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.robots import ROBOTS_MAX_BYTES, RobotsCache, RobotsRules

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_READ_CHUNK = 64 * 1024
# IPv6 prefixes that embed an IPv4 address a gateway may forward to (NAT64 well-known prefix, RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0  # per socket operation (connect, each read)
    deadline_s: float = 60.0  # whole fetch: all redirect hops and the body
    max_redirects: int = 5
    allow_networks: tuple[str, ...] = ()  # CIDRs allowed despite being private/loopback, e.g. "127.0.0.0/8"
    allowed_domains: tuple[str, ...] = ()  # empty: any host
    allowed_schemes: tuple[str, ...] = ("http", "https")
    user_agent: str = "mmcurate/0.1"
    respect_robots: bool = True
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai")
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A typo in a CIDR should fail when the policy is built, not on the first fetch.
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_networks)
        object.__setattr__(self, "_networks", networks)
        unknown = set(self.allowed_schemes) - {"http", "https"}
        if unknown:
            raise ValueError(f"only http and https can be fetched, not {sorted(unknown)}")

    @property
    def user_agent_token(self) -> str:
        """The product token robots.txt groups and X-Robots-Tag scopes name: "mmcurate/0.1" -> "mmcurate"."""
        return self.user_agent.split("/", 1)[0].strip().lower()

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return self._networks


@dataclass(frozen=True)
class FetchResult:
    url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    content_type: str | None  # the Content-Type header as sent, parameters included

    @property
    def media_type(self) -> str | None:
        """ "text/html" for "text/html; charset=utf-8"."""
        if self.content_type is None:
            return None
        return self.content_type.split(";", 1)[0].strip().lower() or None


# ---------------------------------------------------------------------------------------------- address check


def address_refusal(ip: str, allow_networks: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it is allowed."""
    address: IPAddress = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 *is* 127.0.0.1 on a dual-stack socket
            candidates = [address.ipv4_mapped]
        else:  # 6to4, Teredo and NAT64 addresses reach the IPv4 address they carry: judge both
            embedded = address.sixtofour or (address.teredo or (None, None))[1]
            if embedded is None and address in _NAT64:
                embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            if embedded is not None:
                candidates.append(embedded)
    if any(candidate in network for candidate in candidates for network in allow_networks):
        return None
    for candidate in candidates:
        for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
            if getattr(candidate, f"is_{kind}"):
                return f"{ip} is {kind.replace('_', '-')}"
        if not candidate.is_global:  # 100.64.0.0/10 shared space, documentation ranges, …
            return f"{ip} is not globally routable"
    return None


class _GuardedConnectionMixin:
    """Resolves the host, refuses disallowed addresses and connects to the vetted address itself."""

    def __init__(self, *args: Any, allow_networks: tuple[IPNetwork, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allow_networks = allow_networks
        # http.client.HTTPConnection.connect() calls self._create_connection; HTTPS wraps the result in TLS
        # with server_hostname=self.host, so certificate checks still use the name, not the pinned IP.
        self._create_connection = self._create_vetted_connection

    def _create_vetted_connection(
        self, address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        refused: list[str] = []
        last_error: OSError | None = None
        for family, sock_type, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            why = address_refusal(str(sockaddr[0]), self._allow_networks)
            if why is not None:
                refused.append(why)
                continue
            sock = socket.socket(family, sock_type, proto)
            try:
                if isinstance(timeout, (int, float)):  # else the socket module's "default timeout" sentinel
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as err:
                sock.close()
                last_error = err
        if last_error is not None:
            raise last_error
        raise Rejected(Reason.ADDRESS_NOT_ALLOWED, f"{host}: " + "; ".join(refused))


class GuardedHTTPConnection(_GuardedConnectionMixin, http.client.HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, http.client.HTTPSConnection):
    pass


# ---------------------------------------------------------------------------------------------- body cap


class CappedResponse:
    """Wraps an ``http.client.HTTPResponse``: reads stop at ``max_bytes + 1`` and after the fetch deadline.

    Every other attribute (``status``, ``headers``, ``url``, ``getcode()``, ``info()``) is the wrapped response's.
    """

    def __init__(self, response: http.client.HTTPResponse, max_bytes: int, deadline: float):
        self._response = response
        self._max_bytes = max_bytes
        self._deadline = deadline  # time.monotonic() value
        self._bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def __enter__(self) -> CappedResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()

    def read1(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            self.close()
            raise Rejected(Reason.TIMEOUT, "body not complete within the fetch deadline")
        room = self._max_bytes + 1 - self._bytes_read  # one byte past the cap is how we know it is too large
        # read1 returns after at most one recv, so a slow drip comes back here to meet the deadline check.
        chunk = self._response.read1(room if size is None or size < 0 else min(size, room))
        self._bytes_read += len(chunk)
        if self._bytes_read > self._max_bytes:
            self.close()
            raise Rejected(Reason.BODY_TOO_LARGE, f"body exceeds {self._max_bytes} bytes")
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        wanted = -1 if size is None or size < 0 else size
        got = 0
        while wanted < 0 or got < wanted:
            chunk = self.read1(_READ_CHUNK if wanted < 0 else min(_READ_CHUNK, wanted - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# ---------------------------------------------------------------------------------------------- urllib handlers


def _deadline_of(request: urllib.request.Request, policy: FetchPolicy) -> float:
    deadline = getattr(request, "mmcurate_deadline", None)
    if deadline is None:
        deadline = time.monotonic() + policy.deadline_s
        request.mmcurate_deadline = deadline  # type: ignore[attr-defined]
    return deadline


def _host_allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    host = host.rstrip(".").lower()  # "example.com." is the same host
    for domain in allowed_domains:
        domain = domain.strip(".").lower()
        if host == domain or host.endswith("." + domain):
            return True
    return False


class _RequestGuard(urllib.request.BaseHandler):
    """Runs before every request, redirect hops included: scheme, domain, deadline stamp, robots.txt."""

    handler_order = 100  # before the other processors

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self.robots = RobotsCache()

    def _check(self, request: urllib.request.Request) -> urllib.request.Request:
        if request.type not in self.policy.allowed_schemes:
            raise Rejected(Reason.SCHEME_NOT_ALLOWED, request.full_url)
        host = urlsplit(request.full_url).hostname or ""
        if self.policy.allowed_domains and not _host_allowed(host, self.policy.allowed_domains):
            raise Rejected(Reason.DOMAIN_NOT_ALLOWED, host)
        _deadline_of(request, self.policy)
        # robots.txt itself is always allowed (and checking it would fetch it to vet fetching it).
        if self.policy.respect_robots and urlsplit(request.full_url).path != "/robots.txt":
            verdict = self._robots_for(request).verdict(request.full_url)
            if not verdict.allowed:
                raise Rejected(Reason.ROBOTS_DISALLOWED, f"{request.full_url}: {verdict.rule}")
        return request

    http_request = _check
    https_request = _check

    def unknown_open(self, request: urllib.request.Request) -> None:
        raise Rejected(Reason.SCHEME_NOT_ALLOWED, request.full_url)

    def _robots_for(self, request: urllib.request.Request) -> RobotsRules:
        parts = urlsplit(request.full_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, (parts.hostname or "").lower(), port)
        return self.robots.get(key, lambda: self._load_robots(f"{parts.scheme}://{parts.netloc}/robots.txt"))

    def _load_robots(self, robots_url: str) -> RobotsRules:
        """RFC 9309 §2.3.1: 4xx (but 429) means no rules; 5xx, 429 and unreachable mean disallow everything."""
        assert self.parent is not None
        request = urllib.request.Request(robots_url, headers={"User-Agent": self.policy.user_agent})
        try:
            with self.parent.open(request, timeout=self.policy.timeout_s) as response:
                raw = b""
                while len(raw) < ROBOTS_MAX_BYTES:  # rules past the first 512 KiB are ignored, not an error
                    chunk = response.read1(ROBOTS_MAX_BYTES - len(raw))
                    if not chunk:
                        break
                    raw += chunk
        except HTTPError as err:
            err.close()
            if err.code == 429 or err.code >= 500:
                return RobotsRules.disallow_all(f"robots.txt answered {err.code}")
            return RobotsRules.allow_all(f"robots.txt answered {err.code}")
        except Rejected as rejected:
            if rejected.reason in (Reason.ADDRESS_NOT_ALLOWED.value, Reason.DOMAIN_NOT_ALLOWED.value):
                raise  # the page itself would be refused for the same reason: report that reason
            if rejected.reason == Reason.TOO_MANY_REDIRECTS.value:
                return RobotsRules.allow_all("robots.txt redirects too often (treated as unavailable)")
            return RobotsRules.disallow_all(f"robots.txt unreachable: {rejected}")
        except (URLError, OSError, http.client.HTTPException) as err:
            return RobotsRules.disallow_all(f"robots.txt unreachable: {err}")
        # Robots files in Latin-1 or with a BOM exist; a stray byte must not void the whole file.
        text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
        return RobotsRules.parse(text, self.policy.user_agent_token)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, request)

    def _connection(self, host: str, **kwargs: Any) -> GuardedHTTPConnection:
        return GuardedHTTPConnection(host, allow_networks=self.policy.networks, **kwargs)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def https_open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, request, context=self._context)

    def _connection(self, host: str, **kwargs: Any) -> GuardedHTTPSConnection:
        return GuardedHTTPSConnection(host, allow_networks=self.policy.networks, **kwargs)


class _CappedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Counts hops and detects loops itself, raising TOO_MANY_REDIRECTS instead of urllib's generic HTTPError."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        # urllib's own counters must never fire before ours.
        self.max_redirections = policy.max_redirects + 1
        self.max_repeats = policy.max_redirects + 1

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        # The redirect body is never wanted; urllib would read it whole, uncapped.
        fp.close()
        location = headers.get("location") or headers.get("uri")
        if location:
            scheme = urlsplit(location).scheme.lower()
            if scheme and scheme not in self.policy.allowed_schemes:
                raise Rejected(Reason.SCHEME_NOT_ALLOWED, f"redirect to {location}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        hops = getattr(req, "mmcurate_hops", 0) + 1
        chain: tuple[str, ...] = getattr(req, "mmcurate_chain", (req.full_url,))
        newurl_no_fragment = newurl.split("#", 1)[0]
        if newurl_no_fragment in chain:
            raise Rejected(Reason.TOO_MANY_REDIRECTS, f"redirect loop back to {newurl_no_fragment}")
        if hops > self.policy.max_redirects:
            raise Rejected(Reason.TOO_MANY_REDIRECTS, f"more than {self.policy.max_redirects} redirects")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.mmcurate_hops = hops
            new.mmcurate_chain = (*chain, newurl_no_fragment)
            new.mmcurate_deadline = _deadline_of(req, self.policy)
        return new


class _BodyCapProcessor(urllib.request.BaseHandler):
    """Runs after HTTPErrorProcessor (order 1000), so it sees only the final 2xx response."""

    handler_order = 1100

    def __init__(self, policy: FetchPolicy):
        self.policy = policy

    def _cap(self, request: urllib.request.Request, response: Any) -> Any:
        if isinstance(response, CappedResponse):  # already capped by the redirect hop that produced it
            return response
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.policy.max_bytes:
            response.close()
            raise Rejected(Reason.BODY_TOO_LARGE, f"Content-Length {declared} > {self.policy.max_bytes}")
        return CappedResponse(response, self.policy.max_bytes, _deadline_of(request, self.policy))

    http_response = _cap
    https_response = _cap


def build_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener with only the guarded handlers: no proxy, file, ftp or data handlers (see module docstring)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        _RequestGuard(policy),
        _GuardedHTTPHandler(policy),
        _GuardedHTTPSHandler(policy),
        _CappedRedirectHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _BodyCapProcessor(policy),
    ):
        opener.add_handler(handler)
    # A request without its own User-Agent (urllib's default is "Python-urllib/3.x") gets ours.
    opener.addheaders = [("User-agent", policy.user_agent)]
    return opener


_install_lock = threading.Lock()


def install_global_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """Make every plain ``urllib.request.urlopen(...)`` in this process go through the guard.

    Process-global: call it once in each worker process that downloads (e.g. a Ray actor's ``__init__``); a
    process spawned later does not inherit it. ``urlopen(..., context=...)`` bypasses installed openers (urllib
    builds a fresh one), so callers that pass an SSL context are not guarded; img2dataset 1.47 passes none.
    """
    opener = build_opener(policy)
    with _install_lock:
        urllib.request.install_opener(opener)
    return opener


# ---------------------------------------------------------------------------------------------- X-Robots-Tag

# X-Robots-Tag directives whose value follows a colon; "unavailable_after: 2030-01-01" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def x_robots_directives(header_values: list[str], user_agent_token: str) -> set[str]:
    """Directives that apply to ``user_agent_token``, from every X-Robots-Tag header value.

    Handles "noai, noimageai", the scoped "mmcurate: noai" (applies only to that agent) and a scope switch
    inside one value: "otherbot: noindex, mmcurate: noai". Values are lower-cased.
    """
    token = user_agent_token.lower()
    applying: set[str] = set()
    for value in header_values:
        scope: str | None = None  # None: every agent
        for item in value.split(","):
            item = item.strip().lower()
            if ":" in item:
                head, rest = (part.strip() for part in item.split(":", 1))
                if head not in _VALUED_DIRECTIVES and " " not in head:
                    scope, item = head, rest
            if item and (scope is None or scope == token):
                applying.add(item)
    return applying


# ---------------------------------------------------------------------------------------------- Fetcher


class Fetcher:
    """Fetches one URL through the guard and returns it whole, or raises ``Rejected``. Thread-safe."""

    def __init__(self, policy: FetchPolicy | None = None):
        self.policy = policy or FetchPolicy()
        self.opener = build_opener(self.policy)

    def fetch(self, url: str, accept: tuple[str, ...] = ()) -> FetchResult:
        """``accept``: media types or prefixes ending in "/" ("text/html", "image/"); others are CONTENT_TYPE."""
        try:
            request = urllib.request.Request(url, headers={"User-Agent": self.policy.user_agent})
        except ValueError as err:  # "not a url", no scheme
            raise Rejected(Reason.SCHEME_NOT_ALLOWED, f"{url!r}: {err}") from None
        try:
            with self.opener.open(request, timeout=self.policy.timeout_s) as response:
                self._refuse_by_headers(response)
                headers = {}
                for name in dict.fromkeys(key.lower() for key in response.headers.keys()):
                    headers[name] = ", ".join(response.headers.get_all(name) or [])
                result = FetchResult(
                    url=response.url,
                    status=response.status,
                    headers=headers,
                    body=b"",
                    content_type=response.headers.get("Content-Type"),
                )
                self._check_media_type(result, accept)
                body = response.read()
            return FetchResult(result.url, result.status, result.headers, body, result.content_type)
        except Rejected:
            raise
        except HTTPError as err:
            err.close()
            raise Rejected(Reason.HTTP_ERROR, str(err.code)) from None
        except URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise Rejected(Reason.TIMEOUT, f"connect: {err.reason}") from None
            raise Rejected(Reason.CONNECTION_ERROR, str(err.reason)) from None
        except TimeoutError as err:
            raise Rejected(Reason.TIMEOUT, f"read: {err}") from None
        except (OSError, http.client.HTTPException) as err:  # resets, bad status lines, TLS failures
            raise Rejected(Reason.CONNECTION_ERROR, f"{type(err).__name__}: {err}") from None
        except ValueError as err:  # http.client.InvalidURL (bad port) and friends
            raise Rejected(Reason.CONNECTION_ERROR, f"{url!r}: {err}") from None

    def _refuse_by_headers(self, response: Any) -> None:
        values = response.headers.get_all("X-Robots-Tag") or []
        refused = x_robots_directives(values, self.policy.user_agent_token) & {
            directive.lower() for directive in self.policy.disallowed_header_directives
        }
        if refused:
            raise Rejected(Reason.X_ROBOTS_NOAI, f"X-Robots-Tag: {'; '.join(values)}")

    @staticmethod
    def _check_media_type(result: FetchResult, accept: tuple[str, ...]) -> None:
        if not accept:
            return
        media_type = result.media_type or ""
        for wanted in accept:
            if media_type == wanted or (wanted.endswith("/") and media_type.startswith(wanted)):
                return
        raise Rejected(Reason.CONTENT_TYPE, f"{media_type or 'no Content-Type'} not in {list(accept)}")
