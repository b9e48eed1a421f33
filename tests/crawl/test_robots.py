"""robots.txt parsing and matching (RFC 9309), without the network."""

from __future__ import annotations

import itertools
import re
import urllib.robotparser

import pytest

from mmcurate.stages.crawl.robots import RobotsCache, RobotsRules, _pattern


def verdict(text: str, path: str, agent: str = "mmcurate") -> tuple[bool, str]:
    result = RobotsRules.parse(text, agent).verdict(f"http://example.com{path}")
    return result.allowed, result.rule


def test_longest_match_wins_where_first_match_would_allow():
    text = "User-agent: *\nAllow: /\nDisallow: /private\n"
    assert verdict(text, "/private/a") == (False, "Disallow: /private (user-agent: *)")
    assert verdict(text, "/public")[0] is True
    # The reason robotparser is not used: it applies the first matching line and lets /private through.
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(text.splitlines())
    assert stdlib.can_fetch("mmcurate", "http://example.com/private/a") is True


def test_allow_wins_a_tie_and_a_longer_allow_reopens_a_path():
    assert verdict("User-agent: *\nDisallow: /a\nAllow: /a\n", "/a")[0] is True
    assert verdict("User-agent: *\nDisallow: /\nAllow: /pub\n", "/pub/x")[0] is True
    assert verdict("User-agent: *\nDisallow: /\nAllow: /pub\n", "/other")[0] is False


@pytest.mark.parametrize(
    "rule, path, allowed",
    [
        ("/*.gif$", "/img/a.gif", False),
        ("/*.gif$", "/img/a.gif?x=1", True),  # $ anchors the end of path+query
        ("/*.gif", "/img/a.gifs", False),
        ("/a*b", "/a-x-b/c", False),
        ("/search?q=", "/search?q=cats", False),
        ("/~user", "/%7Euser/page", False),  # percent-encoded unreserved characters compare equal
    ],
)
def test_wildcards_end_anchor_and_percent_encoding(rule, path, allowed):
    assert verdict(f"User-agent: *\nDisallow: {rule}\n", path)[0] is allowed


def test_own_group_replaces_the_catch_all_group():
    text = "User-agent: *\nDisallow: /\n\nUser-agent: MMCurate/2.0\nDisallow: /only-this\n"
    assert verdict(text, "/page") == (True, "no matching rule")
    assert verdict(text, "/only-this")[0] is False
    assert verdict(text, "/page", agent="otherbot")[0] is False


def test_own_group_with_empty_disallow_allows_everything():
    text = "User-agent: *\nDisallow: /\n\nUser-agent: mmcurate\nDisallow:\n"
    assert verdict(text, "/anything")[0] is True


def test_groups_for_the_same_agent_are_merged_and_shared_agent_lines_form_one_group():
    text = (
        "User-agent: *\nDisallow: /a\n\n"
        "User-agent: otherbot\nUser-agent: *\nDisallow: /b\n"  # two agent lines, one group
        "Sitemap: http://example.com/sitemap.xml\n"  # not a group member, ends nothing
        "Disallow: /c   # comment\n"
    )
    assert [verdict(text, p)[0] for p in ("/a", "/b", "/c", "/d")] == [False, False, False, True]


def test_fallbacks_and_robots_txt_itself():
    assert RobotsRules.disallow_all("robots.txt answered 503").verdict("http://e.com/x").allowed is False
    assert RobotsRules.allow_all("robots.txt answered 404").verdict("http://e.com/x").allowed is True
    assert verdict("User-agent: *\nDisallow: /\n", "/robots.txt")[0] is True


def test_cache_loads_each_origin_once_and_evicts_least_recently_used():
    cache = RobotsCache(max_origins=2)
    loads: list[str] = []

    def loader(name: str):
        def load() -> RobotsRules:
            loads.append(name)
            return RobotsRules.allow_all(name)

        return load

    a, b, c = ("http", "a", 80), ("http", "b", 80), ("http", "c", 80)
    cache.get(a, loader("a"))
    cache.get(b, loader("b"))
    cache.get(a, loader("a"))  # hit; a is now most recent
    cache.get(c, loader("c"))  # evicts b
    cache.get(a, loader("a"))
    cache.get(b, loader("b"))
    assert loads == ["a", "b", "c", "b"]
    assert len(cache) == 2


def test_threads_starting_on_one_origin_load_its_robots_once_and_other_origins_do_not_wait():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cache = RobotsCache()
    loads: list[str] = []
    slow_started, release = threading.Event(), threading.Event()

    def slow() -> RobotsRules:
        loads.append("slow")
        slow_started.set()
        assert release.wait(10)
        return RobotsRules.allow_all("slow")

    with ThreadPoolExecutor(16) as pool:
        waiting = [pool.submit(cache.get, ("http", "slow", 80), slow) for _ in range(12)]
        assert slow_started.wait(10)
        # while the slow origin loads, another origin is served at once
        fast = pool.submit(cache.get, ("http", "fast", 80), lambda: loads.append("fast") or RobotsRules.allow_all("f"))
        assert fast.result(timeout=10).verdict("http://fast/x").allowed
        release.set()
        assert all(f.result(timeout=10).verdict("http://slow/x").allowed for f in waiting)
    assert loads.count("slow") == 1 and loads.count("fast") == 1


# ------------------------------------------------------------------------------------------------ bounded work


@pytest.mark.timeout(30)  # a backtracking regex took 2.8 s at 30 characters and doubles with each one more
def test_many_wildcards_match_in_linear_time():
    text = "User-agent: *\nDisallow: /*a*a*a*a*a*a*a*a*a*a*a*b\n"
    assert verdict(text, "/" + "a" * 5000)[0] is True
    assert verdict(text, "/" + "a" * 5000 + "b")[0] is False


@pytest.mark.timeout(30)  # every rule used to be copied once per user-agent line of its group: 10^8 objects here
def test_a_group_with_many_agents_and_many_rules_is_parsed_once():
    agents = "".join(f"User-agent: bot{i}\n" for i in range(10_000))
    rules = "".join(f"Disallow: /p{i}/\n" for i in range(10_000))
    rules_for_us = RobotsRules.parse(agents + "User-agent: *\n" + rules, "mmcurate")
    assert len(rules_for_us.rules) == 10_000
    assert rules_for_us.verdict("http://example.com/p9999/x").allowed is False


def _regex_matches(pattern: str, path: str) -> bool:
    """The old matcher: a regex with ".*" per "*" (exponential on hostile patterns, fine on short ones)."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    return re.match(".*".join(map(re.escape, body.split("*"))) + ("$" if anchored else ""), path) is not None


def test_the_linear_matcher_agrees_with_the_regex_on_every_short_case():
    for pattern in ("".join(p) for n in range(1, 6) for p in itertools.product("/ab*$", repeat=n)):
        if not pattern.startswith("/") or "$" in pattern[:-1]:
            continue
        for path in ("/" + "".join(p) for n in range(0, 5) for p in itertools.product("ab", repeat=n)):
            assert _pattern(pattern).matches(path) is _regex_matches(pattern, path), (pattern, path)
