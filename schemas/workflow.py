"""The workflow file: which stages run, in order, with what config. Loading it validates everything up front."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcurate.schemas.stage_configs import STAGE_KINDS, StageConfig


class WorkflowError(ValueError):
    """A workflow file that cannot run; the message names the file, the stage and the field."""


class StageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str  # the stage's name in the run directory (``id`` in the file, defaulting to the stage kind)
    kind: str
    config: StageConfig
    raw: dict[str, Any]  # the config as written, before ${...} substitution

    @property
    def config_hash(self) -> str:
        """Hash of the resolved config, defaults and ${...} values included: what reject rows cite."""
        resolved = {"kind": self.kind, **self.config.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


class Workflow(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    path: str
    sha256: str
    # service name -> its config as written; the service that runs it (handed to the runner) validates it
    serve: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # records whose processing may raise unexpectedly (each becomes an internal_error row) before a stage fails
    max_error_fraction: float = Field(0.01, ge=0, le=1)
    # false: once the pii stage has committed, raw text is purged from the stages before it (pipeline/raw_text.py)
    retain_raw_text: bool = True
    stages: tuple[StageSpec, ...]


_PLACEHOLDER = re.compile(r"\$\{([a-z_.]+)\}")


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            if match.group(1) not in variables:
                raise WorkflowError(f"{where}: unknown variable ${{{match.group(1)}}} (known: {sorted(variables)})")
            return variables[match.group(1)]

        return _PLACEHOLDER.sub(lookup, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def _format_error(path: str, where: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(config)"
        lines.append(f"{path}: {where}: field '{field}': {e['msg']}")
    return "\n".join(lines)


def _set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one ``--set`` override: ``align.image_max_side=256`` or ``serve.<service>.port=8000``."""
    head, _, rest = dotted.partition(".")
    if head in ("max_error_fraction", "retain_raw_text") and not rest:
        doc[head] = value
        return
    if not rest:
        raise WorkflowError(f"--set {dotted}: expected <stage>.<field>=<value> or serve.<...>=<value>")
    if head == "serve":
        target = doc.setdefault("serve", {})
    else:
        matches = [s for s in doc.get("stages", []) if s.get("id", s.get("stage")) == head]
        if not matches:
            raise WorkflowError(f"--set {dotted}: no stage named '{head}'")
        target = matches[0]
    *parents, leaf = rest.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def load_workflow(
    path: str | Path, *, overrides: list[str] = (), variables: dict[str, str] | None = None
) -> Workflow:
    """Parse and validate a workflow file. ``overrides`` are ``stage.field=yaml-value`` strings; ``variables``
    fill ``${name}`` placeholders (e.g. ``${<service>.base_url}``, defined by a ``serve:`` service)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise WorkflowError(f"{path}: cannot read: {err}") from err
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WorkflowError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise WorkflowError(f"{path}: expected a mapping with 'name' and 'stages'")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkflowError(f"--set {item}: expected key=value")
        _set_dotted(doc, key.strip(), yaml.safe_load(value))
    known_top = ("name", "serve", "max_error_fraction", "retain_raw_text", "stages")
    unknown_top = set(doc) - set(known_top)
    if unknown_top:
        raise WorkflowError(f"{path}: unknown top-level field(s) {sorted(unknown_top)} (known: {', '.join(known_top)})")
    serve = doc.get("serve") or {}
    if not isinstance(serve, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in serve.items()):
        raise WorkflowError(f"{path}: serve: expected a mapping of service name to its config, "
                            f"e.g. 'serve: {{<service>: {{port: 8000}}}}'")
    raw_stages = doc.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise WorkflowError(f"{path}: 'stages' must be a non-empty list")
    specs = []
    for i, entry in enumerate(raw_stages):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise WorkflowError(f"{path}: stages[{i}]: each stage needs a 'stage: <kind>' field")
        kind = entry["stage"]
        if kind not in STAGE_KINDS:
            raise WorkflowError(f"{path}: stages[{i}]: unknown stage '{kind}' (known: {', '.join(STAGE_KINDS)})")
        name = entry.get("id", kind)
        raw = {k: v for k, v in entry.items() if k not in ("stage", "id")}
        where = f"stage '{name}' (stages[{i}])"
        resolved = _substitute(raw, variables or {}, f"{path}: {where}")
        try:
            config = STAGE_KINDS[kind].config.model_validate(resolved)
        except ValidationError as err:
            raise WorkflowError(_format_error(path, where, err)) from err
        specs.append(StageSpec(name=name, kind=kind, config=config, raw=raw))
    _check_order(path, specs)
    try:
        return Workflow(
            name=str(doc.get("name") or Path(path).stem),
            path=path,
            sha256=hashlib.sha256(text.encode()).hexdigest(),
            serve=serve,
            max_error_fraction=doc.get("max_error_fraction", 0.01),
            retain_raw_text=doc.get("retain_raw_text", True),
            stages=tuple(specs),
        )
    except ValidationError as err:
        raise WorkflowError(_format_error(path, "workflow", err)) from err


def validated_serve(workflow: Workflow, models: Mapping[str, type[BaseModel]]) -> dict[str, BaseModel]:
    """Each ``serve:`` entry checked against the config model of the service named (``models``: name -> model)."""
    configs = {}
    for name, raw in workflow.serve.items():
        if name not in models:
            raise WorkflowError(f"{workflow.path}: serve: unknown service '{name}' "
                                f"(known: {', '.join(sorted(models)) or 'none were given'})")
        try:
            configs[name] = models[name].model_validate(raw)
        except ValidationError as err:
            raise WorkflowError(_format_error(workflow.path, f"serve.{name}", err)) from err
    return configs


# run-directory entries a stage's link DIR/<name> would collide with: the imported labels, the run log, the links
# to shards and rejects, the demo site
_RUN_DIR_NAMES = frozenset({"labels", "logs", "rejects", "shards", "demo_site"})


def _check_order(path: str, specs: list[StageSpec]) -> None:
    """Each stage's requirements (capabilities, extension columns) must be provided by an earlier stage; one
    source first, a sink only last."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise WorkflowError(f"{path}: stage names must be unique (use 'id:' to tell two stages apart): {names}")
    taken = sorted(set(names) & _RUN_DIR_NAMES)
    if taken:
        raise WorkflowError(f"{path}: stage name(s) {taken} name a run-directory entry that is no stage's "
                            f"(give the stage another 'id:')")
    provided: set[str] = set()
    columns: set[str] = set()  # extension columns written by the stages so far (schemas.record.EXTENSION_COLUMNS)
    for i, spec in enumerate(specs):
        kind = STAGE_KINDS[spec.kind]
        if (kind.role == "source") != (i == 0):
            raise WorkflowError(f"{path}: stage '{spec.name}': a source stage (crawl) must come first, and only once")
        if kind.role == "sink" and i != len(specs) - 1:
            raise WorkflowError(f"{path}: stage '{spec.name}': a sink stage must be last")
        missing = kind.requires - provided
        if missing:
            raise WorkflowError(
                f"{path}: stage '{spec.name}' needs {sorted(missing)} from an earlier stage "
                f"(provided so far: {sorted(provided) or 'nothing'})"
            )
        provided |= kind.provides
        needed = kind.needs_columns | spec.config.columns_needed()
        if needed - columns:
            raise WorkflowError(
                f"{path}: stage '{spec.name}' reads column(s) {sorted(needed - columns)} that no earlier stage writes "
                f"(written so far: {sorted(columns) or 'none'})"
            )
        added = spec.config.columns_added()
        columns |= kind.adds_columns if added is None else (added & kind.adds_columns)
