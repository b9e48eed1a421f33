"""What a workflow's ``serve:`` section can start: a ``Service``, handed to the runner by its caller (the CLI).

The runner knows services only through this contract, so it runs any workflow with the services it is given and
nothing is special about the demo site. A run with ``serve: {name: {...}}``:

1. validates ``{...}`` against ``services[name].config`` before anything starts (``WorkflowError`` otherwise),
2. validates the stages with ``placeholders`` standing in for the service's ``${...}`` variables,
3. inside the run-directory lock, enters ``serve(config, run_root)`` for the length of the run and substitutes the
   variables it yields. ``run_root`` is the run directory, or its local cache when the run directory is remote.

``variables(config, run_root)``, where a service has it, gives the values ``serve`` would yield without starting
anything: ``mmcurate plan`` computes the fingerprints a run would compute from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Service:
    config: type[BaseModel]  # the ``serve.<name>`` mapping, validated; its defaults-filled dump enters fingerprints
    placeholders: Mapping[str, str]  # variable -> what it stands for while the workflow is validated
    serve: Callable[[Any, Path], AbstractContextManager[dict[str, str]]]  # (validated config, run root) -> variables
    variables: Callable[[Any, Path], dict[str, str]] | None = None  # the same values, nothing started
