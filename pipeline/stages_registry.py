"""Stage kind → implementation. Imported lazily so that validating a workflow never imports torch or img2dataset."""

from __future__ import annotations

import importlib
from typing import Any

IMPLEMENTATIONS = {
    "crawl": "mmcurate.stages.crawl:CrawlStage",
    "align": "mmcurate.stages.align:AlignStage",
    "shard": "mmcurate.stages.shard:ShardStage",
}


def stage_class(kind: str) -> Any:
    module, _, attr = IMPLEMENTATIONS[kind].partition(":")
    return getattr(importlib.import_module(module), attr)
