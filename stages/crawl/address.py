"""Which hosts and IP addresses the crawler may contact.

``address_refusal`` judges the IP a connection is about to be made to (not the name in the URL): a name that
resolves to 10.0.0.1, ``http://2130706433/`` and ``[::ffff:127.0.0.1]`` all meet the same check. ``host_allowed``
matches a host against ``allowed_domains`` label by label ("badexample.com" is not inside "example.com").
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from mmcurate.schemas.stage_configs import CrawlConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that embed an IPv4 address a gateway may forward to (NAT64 well-known prefix, RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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


def _bare(host: str) -> str:
    return host.strip(".").lower()  # "Example.com." is the same host


def host_allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    """``host`` equals or is a subdomain of one of ``allowed_domains``."""
    host = _bare(host)
    return any(host == domain or host.endswith("." + domain) for domain in map(_bare, allowed_domains))


def crawl_domains(config: CrawlConfig) -> tuple[str, ...]:
    """The hosts a page crawl stays on: ``allowed_domains`` when given, else the seeds' hosts."""
    if config.allowed_domains:
        return tuple(dict.fromkeys(map(_bare, config.allowed_domains)))
    return tuple(dict.fromkeys(_bare(urlsplit(seed).hostname or "") for seed in config.seeds))


def narrow_domains(scope: tuple[str, ...], limit: tuple[str, ...]) -> tuple[str, ...]:
    """The hosts inside both ``scope`` and ``limit`` (each empty meaning any host), as a domain list.

    Raises ValueError when the two do not overlap: an empty list would mean "any host", the opposite.
    """
    if not limit:
        return scope
    if not scope:
        return limit
    both = []
    for a in scope:
        for b in limit:
            if host_allowed(a, (b,)):
                both.append(a)  # a lies inside b: the narrower of the two
            elif host_allowed(b, (a,)):
                both.append(b)
    if not both:
        raise ValueError(f"no host lies inside both {list(scope)} and fetch.allowed_domains {list(limit)}")
    return tuple(dict.fromkeys(map(_bare, both)))
