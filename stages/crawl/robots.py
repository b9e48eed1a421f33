"""robots.txt rules (RFC 9309) and a per-origin cache of them.

Why not ``urllib.robotparser``: it applies the *first* rule that matches in file order, so ``Allow: /`` above
``Disallow: /private`` lets ``/private`` through, which RFC 9309 (longest match wins) and every major crawler
forbid; it also keeps only the first ``User-agent: *`` group and knows no ``*`` / ``$`` patterns. The format is
small enough that a faithful parser is shorter than the workarounds.

Fetching robots.txt lives in ``robots_fetch.py`` (it must go through the same network guard as the page); what a
verdict means for a fetch is decided in ``optout.py``.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

# Characters kept as they are when paths and rule patterns are brought to one percent-encoded form, so that
# "/a%7Eb" and "/a~b" compare equal (RFC 9309 §2.2.2) while "/a%2Fb" stays distinct from "/a/b".
_PATH_SAFE = "/:@!$&'()*+,;=?-._~%"
# Read no more of a robots.txt than this (RFC 9309 §2.5 asks crawlers to parse at least 500 KiB).
ROBOTS_MAX_BYTES = 512 * 1024


@dataclass(frozen=True)
class RobotsRule:
    allow: bool
    pattern: str  # the rule's path as written, e.g. "/private*"
    user_agent: str  # the group the rule came from, "*" for the catch-all group

    def __str__(self) -> str:
        return f"{'Allow' if self.allow else 'Disallow'}: {self.pattern} (user-agent: {self.user_agent})"


@dataclass(frozen=True)
class RobotsVerdict:
    allowed: bool
    rule: str  # the deciding rule, or why there was none ("no matching rule", "robots.txt answered 503")


@dataclass
class _Group:
    user_agents: set[str] = field(default_factory=set)
    rules: list[tuple[bool, str]] = field(default_factory=list)  # (allow, pattern), once however many agents
    crawl_delay: float | None = None  # seconds; not in RFC 9309, but the common extension (Bing, Yandex)


def _seconds(value: str) -> float | None:
    """A Crawl-delay value: a non-negative finite number of seconds, or None for anything else."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _normalise_path(path: str) -> str:
    return quote(unquote(path), safe=_PATH_SAFE)


@dataclass(frozen=True)
class _Pattern:
    """A rule's path split at its ``*`` wildcards; ``anchored`` when it ended in ``$`` (end of path+query)."""

    pieces: tuple[str, ...]  # normalised literal text between the wildcards; never empty as a tuple
    anchored: bool

    def matches(self, path: str) -> bool:
        """Leftmost-first matching of each piece: for ``*``-only globs, taking the earliest place for a piece never
        loses a match a later place would give, so one ``str.find`` per piece decides — linear in the path, where a
        backtracking regex is exponential in the number of ``*`` ("/*a*a*a*a*a*a*a*a*a*a*a*b")."""
        first, *middle_and_last = self.pieces
        if not path.startswith(first):
            return False
        if not middle_and_last:
            return len(path) == len(first) if self.anchored else True
        *middle, last = middle_and_last
        position = len(first)
        for piece in middle:
            found = path.find(piece, position)
            if found < 0:
                return False
            position = found + len(piece)
        if self.anchored:
            return len(path) - len(last) >= position and path.endswith(last)
        return path.find(last, position) >= 0


@functools.lru_cache(maxsize=4096)
def _pattern(pattern: str) -> _Pattern:
    """``*`` matches any run of characters, a trailing ``$`` anchors the end; everything else is literal."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    return _Pattern(tuple(_normalise_path(piece) for piece in body.split("*")), anchored)


def _parse_groups(text: str) -> list[_Group]:
    groups: list[_Group] = []
    current: _Group | None = None
    last_was_agent = False
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            # Consecutive user-agent lines share one group; one after rules starts a new group.
            if current is None or not last_was_agent:
                current = _Group()
                groups.append(current)
            # "Googlebot/2.1" names the product token "googlebot".
            current.user_agents.add(value.split("/", 1)[0].strip().lower())
            last_was_agent = True
        elif key == "crawl-delay":  # a group member, like a rule: a user-agent line after it starts a new group
            last_was_agent = False
            seconds = _seconds(value)
            if current is not None and seconds is not None:
                current.crawl_delay = seconds if current.crawl_delay is None else max(current.crawl_delay, seconds)
        elif key in ("allow", "disallow"):
            last_was_agent = False
            if current is None or not value:  # rules before any user-agent, or an empty "Disallow:"
                continue
            current.rules.append((key == "allow", value))
        else:  # sitemap, host, …: not group members, do not end the group
            continue
    return groups


@dataclass(frozen=True)
class RobotsRules:
    """The rules of one robots.txt that apply to one user-agent token."""

    rules: tuple[RobotsRule, ...]
    fallback: RobotsVerdict  # the verdict when no rule matches
    crawl_delay: float | None = None  # the largest Crawl-delay of the selected groups; what it does: politeness.py

    @classmethod
    def parse(cls, text: str, user_agent_token: str) -> RobotsRules:
        """Select the groups for ``user_agent_token`` (exact, case-insensitive), else the ``*`` groups.

        All groups naming the same agent are merged (RFC 9309 §2.2.1), their Crawl-delay too (the largest).
        """
        token = user_agent_token.lower()
        groups = _parse_groups(text)
        agent = token if any(token in group.user_agents for group in groups) else "*"
        rules = tuple(
            RobotsRule(allow=allow, pattern=pattern, user_agent=agent)
            for group in groups
            if agent in group.user_agents
            for allow, pattern in group.rules
        )
        delays = [g.crawl_delay for g in groups if agent in g.user_agents and g.crawl_delay is not None]
        return cls(rules=rules, fallback=RobotsVerdict(True, "no matching rule"), crawl_delay=max(delays, default=None))

    @classmethod
    def allow_all(cls, why: str) -> RobotsRules:
        return cls(rules=(), fallback=RobotsVerdict(True, why))

    @classmethod
    def disallow_all(cls, why: str) -> RobotsRules:
        return cls(rules=(), fallback=RobotsVerdict(False, why))

    def verdict(self, url: str) -> RobotsVerdict:
        """Longest matching pattern wins; on a tie, Allow wins (RFC 9309 §2.2.2)."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if path == "/robots.txt":
            return RobotsVerdict(True, "robots.txt itself is always allowed")
        path = _normalise_path(path)
        best: RobotsRule | None = None
        for rule in self.rules:
            if not _pattern(rule.pattern).matches(path):
                continue
            longer = best is None or len(rule.pattern) > len(best.pattern)
            tie_allow = best is not None and len(rule.pattern) == len(best.pattern) and rule.allow
            if longer or tie_allow:
                best = rule
        if best is None:
            return self.fallback
        return RobotsVerdict(best.allow, str(best))


OriginKey = tuple[str, str, int]  # (scheme, host, port)


class RobotsCache:
    """Thread-safe LRU of ``RobotsRules`` per origin. One thread loads an origin's robots.txt while the others
    asking for that origin wait for it (32 threads starting on one host would otherwise fetch it 32 times);
    other origins are not held up."""

    def __init__(self, max_origins: int = 10_000):
        self._max_origins = max_origins
        self._rules: OrderedDict[OriginKey, RobotsRules] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[OriginKey, threading.Lock] = {}

    def _cached(self, key: OriginKey) -> RobotsRules | None:
        with self._lock:
            if key in self._rules:
                self._rules.move_to_end(key)
                return self._rules[key]
        return None

    def get(self, key: OriginKey, load: Callable[[], RobotsRules]) -> RobotsRules:
        rules = self._cached(key)
        if rules is not None:
            return rules
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            rules = self._cached(key)  # loaded while this thread waited
            if rules is not None:
                return rules
            rules = load()
            with self._lock:
                self._rules[key] = rules
                self._rules.move_to_end(key)
                while len(self._rules) > self._max_origins:
                    self._rules.popitem(last=False)
                self._loading.pop(key, None)
        return rules

    def __len__(self) -> int:
        return len(self._rules)
