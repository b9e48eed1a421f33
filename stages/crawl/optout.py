"""Every opt-out signal a site can give, and what the crawler does about each — for live fetches and archives alike.

  robots.txt       per origin; a Disallow refuses the fetch (ROBOTS_DISALLOWED). Rules are parsed and matched in
                   ``robots.py``; a robots.txt that cannot be had is judged here (RFC 9309 §2.3.1).
  X-Robots-Tag     on any response, live or archived in a WARC: a refused directive (``noai``, ``noimageai`` by
                   default; scoped ones only when scoped to us) refuses that response (X_ROBOTS_NOAI).
  <meta robots>    ``<meta name="robots">`` and ``<meta name="{our token}">``: ``noai`` refuses every medium of the
                   page, ``noimageai`` its images; ``nofollow``/``none`` keep its links out of the crawl.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.robots import RobotsRules

# ---------------------------------------------------------------------------------------------- robots.txt


def robots_refusal(rules: RobotsRules, url: str) -> Rejected | None:
    verdict = rules.verdict(url)
    return None if verdict.allowed else Rejected(Reason.ROBOTS_DISALLOWED, f"{url}: {verdict.rule}")


def robots_for_status(status: int) -> RobotsRules:
    """A robots.txt answered with an error: 4xx (but 429) means no rules; 5xx and 429 mean disallow everything."""
    if status == 429 or status >= 500:
        return RobotsRules.disallow_all(f"robots.txt answered {status}")
    return RobotsRules.allow_all(f"robots.txt answered {status}")


def robots_unreachable(why: str) -> RobotsRules:
    """No answer at all: the site may have meant to say no, so assume it did."""
    return RobotsRules.disallow_all(f"robots.txt unreachable: {why}")


def robots_from_text(raw: bytes, user_agent_token: str) -> RobotsRules:
    # Robots files in Latin-1 or with a BOM exist; a stray byte must not void the whole file.
    return RobotsRules.parse(raw.decode("utf-8", errors="replace").lstrip("\ufeff"), user_agent_token)


# ---------------------------------------------------------------------------------------------- X-Robots-Tag

# X-Robots-Tag directives whose value follows a colon; "unavailable_after: 2030-01-01" is not a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def x_robots_directives(header_values: Iterable[str], user_agent_token: str) -> set[str]:
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


def header_refusal(header_values: list[str], user_agent_token: str, refused: Iterable[str]) -> Rejected | None:
    """X_ROBOTS_NOAI when the response's X-Robots-Tag values carry a refused directive that applies to us."""
    hit = x_robots_directives(header_values, user_agent_token) & {directive.lower() for directive in refused}
    return Rejected(Reason.X_ROBOTS_NOAI, f"X-Robots-Tag: {'; '.join(header_values)}") if hit else None


# ---------------------------------------------------------------------------------------------- <meta name="robots">


@dataclass(frozen=True)
class PageDirectives:
    noai: bool = False  # no AI use of anything on the page
    noimageai: bool = False  # no AI use of the page's images
    nofollow: bool = False  # do not crawl the page's links


def meta_robots(metas: Iterable[tuple[str, str]], user_agent_token: str | None) -> PageDirectives:
    """``metas``: (name, content) of every ``<meta>``; a token of None honours only ``name="robots"``."""
    names = {"robots"} | ({user_agent_token.lower()} if user_agent_token else set())
    directives: set[str] = set()
    for name, content in metas:
        if name.strip().lower() in names:
            directives.update(d.strip().lower() for d in content.split(","))
    return PageDirectives(
        noai="noai" in directives, noimageai="noimageai" in directives, nofollow=bool(directives & {"nofollow", "none"})
    )


def page_media_refusal(noai: bool, noimageai: bool, is_image: bool, archived: bool = False) -> Rejected | None:
    """X_ROBOTS_NOAI for a medium of a page that opted out of AI use (of everything, or of its images)."""
    page = "the archived page" if archived else "the page"
    if noai:
        return Rejected(Reason.X_ROBOTS_NOAI, f"{page} carries a noai robots directive")
    if noimageai and is_image:
        return Rejected(Reason.X_ROBOTS_NOAI, f"{page} carries a noimageai robots directive")
    return None
