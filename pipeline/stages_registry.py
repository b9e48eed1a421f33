"""Stage kind → implementation class, from the one registration (``schemas.stage_configs.STAGE_KINDS``).
Imported lazily so that validating a workflow never imports torch or img2dataset."""

from __future__ import annotations

import importlib
from typing import Any

from mmcurate.schemas.stage_configs import STAGE_KINDS


def implementation_module(kind: str) -> str:
    return STAGE_KINDS[kind].implementation.partition(":")[0]


def stage_class(kind: str) -> Any:
    module, _, attr = STAGE_KINDS[kind].implementation.partition(":")
    return getattr(importlib.import_module(module), attr)
