"""The crawl config's fetch section as the fetch guard's policy."""

from __future__ import annotations

from mmcurate.schemas.stage_configs import FetchConfig
from mmcurate.stages.crawl.fetch import FetchPolicy


def fetch_policy(config: FetchConfig) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=config.max_bytes,
        timeout_s=config.timeout_s,
        deadline_s=config.deadline_s,
        max_redirects=config.max_redirects,
        allow_networks=tuple(config.allow_networks),
        user_agent=config.user_agent,
        respect_robots=config.respect_robots,
        disallowed_header_directives=tuple(config.disallowed_header_directives),
    )
