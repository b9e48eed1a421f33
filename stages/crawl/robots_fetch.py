"""Fetching one origin's robots.txt, through the same guard as the page it is fetched for.

What the answer means is RFC 9309 §2.3.1 (decided in ``optout.py``): a 4xx other than 429 means no rules; 5xx,
429 and no answer at all mean disallow everything; rules past the first ``ROBOTS_MAX_BYTES`` are ignored.
Three outcomes are *not* turned into rules, because they say nothing about the site's wishes and would otherwise be
cached for every later fetch of the origin: the page's own address or domain being refused (the page gets that
reason), the host being past its error budget (the page is HOST_FAILING), and the page's deadline passing while
robots.txt was read (the page times out).
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.error import HTTPError, URLError

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.connection import DeadlineExceeded
from mmcurate.stages.crawl.optout import robots_for_status, robots_from_text, robots_unreachable
from mmcurate.stages.crawl.robots import ROBOTS_MAX_BYTES, RobotsRules

# the host failing its error budget is the gate's verdict on the host, not robots.txt's on the page
_NOT_RULES = (Reason.ADDRESS_NOT_ALLOWED.value, Reason.DOMAIN_NOT_ALLOWED.value, Reason.HOST_FAILING.value)


def load_robots(open_robots: Callable[[], Any], user_agent_token: str) -> RobotsRules:
    """``open_robots()`` opens the robots.txt URL (through the guard) and returns the response."""
    try:
        with open_robots() as response:
            raw = b""
            while len(raw) < ROBOTS_MAX_BYTES:  # the rest is ignored, not an error
                chunk = response.read1(ROBOTS_MAX_BYTES - len(raw))
                if not chunk:
                    break
                raw += chunk
    except HTTPError as err:
        err.close()
        return robots_for_status(err.code)
    except DeadlineExceeded:
        raise
    except Rejected as rejected:
        if rejected.reason in _NOT_RULES:
            raise
        if rejected.reason == Reason.TOO_MANY_REDIRECTS.value:
            return RobotsRules.allow_all("robots.txt redirects too often (treated as unavailable)")
        return robots_unreachable(str(rejected))
    except URLError as err:
        if isinstance(err.reason, DeadlineExceeded):
            raise err.reason from None
        return robots_unreachable(str(err.reason))
    except (OSError, http.client.HTTPException) as err:
        return robots_unreachable(f"{type(err).__name__}: {err}")
    return robots_from_text(raw, user_agent_token)
