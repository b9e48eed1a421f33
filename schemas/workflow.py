"""The workflow file: a graph of named stages, each with its config and its inputs. Loading it validates everything
up front: stage kinds, fields and types, names, inputs (known, no cycle), and each stage's requirements along every
path into it.

A stage reads ``input: <name>`` or ``input: [<name>, ...]`` (fan-in: the union of the inputs' records); without
``input`` a non-source stage reads the stage written before it, so a linear file is the chain it always was. A
source reads nothing. Nothing may read a sink; a workflow may have several (each writes its own shard set).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcurate.schemas.stage_configs import STAGE_KINDS, StageConfig
from mmcurate.schemas.yaml_files import load_yaml


class WorkflowError(ValueError):
    """A workflow file that cannot run; the message names the file, the stage and the field."""


class StageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str  # the stage's name in the run directory (``id`` in the file, defaulting to the stage kind)
    kind: str
    inputs: tuple[str, ...] = ()  # the stages it reads, as written (``input:``, else the stage before it)
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
    stages: tuple[StageSpec, ...]  # in an order that runs every stage after its inputs (the file's, where it can)

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    @property
    def sinks(self) -> tuple[StageSpec, ...]:
        return tuple(s for s in self.stages if STAGE_KINDS[s.kind].role == "sink")

    def consumers(self, name: str) -> tuple[StageSpec, ...]:
        return tuple(s for s in self.stages if name in s.inputs)


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


def _set_dotted(path: str, doc: dict[str, Any], dotted: str, text: str) -> None:
    """Apply one ``--set`` override: ``align.image_max_side=256`` or ``serve.<service>.port=8000``; ``text`` is the
    value as YAML. Every mistake is a ``WorkflowError`` naming the file, the override and the stage."""
    where = f"{path}: --set {dotted}={text}"
    try:
        value = load_yaml(text)
    except yaml.YAMLError as err:
        raise WorkflowError(f"{where}: the value is not valid YAML: "
                            f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}") from err
    head, _, rest = dotted.partition(".")
    if head in ("max_error_fraction", "retain_raw_text") and not rest:
        doc[head] = value
        return
    if not rest:
        raise WorkflowError(f"{where}: expected <stage>.<field>=<value> or serve.<...>=<value>")
    if head == "serve":
        if doc.get("serve") is None:
            doc["serve"] = {}
        target, owner = doc["serve"], "serve"
    else:
        stages = doc.get("stages") if isinstance(doc.get("stages"), list) else []
        matches = [s for s in stages if isinstance(s, dict) and s.get("id", s.get("stage")) == head]
        if not matches:
            raise WorkflowError(f"{where}: no stage named '{head}'")
        target, owner = matches[0], f"stage '{head}'"
    *parents, leaf = rest.split(".")
    if not leaf or not all(parents):
        raise WorkflowError(f"{where}: an empty field name")
    walked = [head]
    for part in parents:
        if not isinstance(target, dict):
            break
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        walked.append(part)
    if not isinstance(target, dict):
        raise WorkflowError(f"{where}: {owner}: '{'.'.join(walked)}' is {type(target).__name__} "
                            f"{target!r}, not a mapping of fields")
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
        doc = load_yaml(text)
    except yaml.YAMLError as err:
        raise WorkflowError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise WorkflowError(f"{path}: expected a mapping with 'name' and 'stages'")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkflowError(f"{path}: --set {item}: expected key=value")
        _set_dotted(path, doc, key.strip(), value)
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
        if not isinstance(kind, str) or kind not in STAGE_KINDS:
            raise WorkflowError(f"{path}: stages[{i}]: unknown stage {kind!r} (known: {', '.join(STAGE_KINDS)})")
        name = entry.get("id", kind)
        where = f"stage '{name}' (stages[{i}])"
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
            raise WorkflowError(f"{path}: stages[{i}]: stage name {name!r} must match {_NAME.pattern} and not be one "
                                f"of the run directory's own entries {sorted(RESERVED_NAMES)}")
        inputs = _inputs(path, where, entry, specs, STAGE_KINDS[kind].role)
        raw = {k: v for k, v in entry.items() if k not in ("stage", "id", "input")}
        resolved = _substitute(raw, variables or {}, f"{path}: {where}")
        try:
            config = STAGE_KINDS[kind].config.model_validate(resolved)
        except ValidationError as err:
            raise WorkflowError(_format_error(path, where, err)) from err
        specs.append(StageSpec(name=name, kind=kind, config=config, raw=raw, inputs=inputs))
    specs = _check_graph(path, specs)
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


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# top-level entries of the run directory (pipeline.rundir; labels: what `mmcurate label import` writes; train: what
# `mmcurate train` writes) a stage's link may not take the place of
RESERVED_NAMES = frozenset({"shards", "rejects", "logs", "labels", "train", "demo_site", "manifest", "stats"})


def _inputs(path: str, where: str, entry: dict[str, Any], earlier: list[StageSpec], role: str) -> tuple[str, ...]:
    """The names a stage reads: ``input`` as written (one name or a list), else the stage before it."""
    if "input" not in entry:
        if role == "source":
            return ()
        if not earlier:
            raise WorkflowError(f"{path}: {where}: a {role} stage needs an input, and no stage comes before it "
                                f"(put a source stage such as crawl first, or give 'input: <stage name>')")
        return (earlier[-1].name,)
    value = entry["input"]
    names = [value] if isinstance(value, str) else value
    if role == "source":
        raise WorkflowError(f"{path}: {where}: a source stage reads no other stage; remove 'input'")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise WorkflowError(f"{path}: {where}: 'input' must be a stage name or a non-empty list of stage names")
    if len(set(names)) != len(names):
        raise WorkflowError(f"{path}: {where}: 'input' names a stage twice: {names}")
    return tuple(names)


def _check_graph(path: str, specs: list[StageSpec]) -> list[StageSpec]:
    """Names unique, inputs known, no cycle, nothing reads a sink; then, in an order that puts every stage after
    its inputs, each stage's requirements (capabilities, extension columns) must hold along every path into it: a
    stage is guaranteed what all of its inputs are guaranteed, plus what it provides. Returns that order: the
    file's, wherever the file already lists inputs first."""
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise WorkflowError(f"{path}: stage names must be unique (use 'id:' to tell two stages apart): "
                            f"{', '.join(repr(n) for n in duplicated)} appear more than once")
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for name in spec.inputs:
            if name not in by_name:
                raise WorkflowError(f"{path}: stage '{spec.name}': unknown input '{name}' (stages: {', '.join(names)})")
            if STAGE_KINDS[by_name[name].kind].role == "sink":
                raise WorkflowError(f"{path}: stage '{spec.name}': input '{name}' is a sink; a sink's shards are not "
                                    f"records another stage reads")
    order = _topological(path, specs)
    provided: dict[str, frozenset[str]] = {}
    columns: dict[str, frozenset[str]] = {}  # extension columns (schemas.record.EXTENSION_COLUMNS) on every path
    # column -> every origin (``column_origins``: the model behind an embedding) its values may have on some path
    origins: dict[str, dict[str, frozenset[str]]] = {}
    for spec in order:
        kind = STAGE_KINDS[spec.kind]
        upstream_caps = frozenset.intersection(*(provided[n] for n in spec.inputs)) if spec.inputs else frozenset()
        upstream_cols = frozenset.intersection(*(columns[n] for n in spec.inputs)) if spec.inputs else frozenset()
        missing = kind.requires - upstream_caps
        if missing:
            paths = [n for n in spec.inputs if not kind.requires <= provided[n]]
            raise WorkflowError(
                f"{path}: stage '{spec.name}' needs {sorted(missing)} from the stages before it, and "
                + (f"the path through input {', '.join(repr(n) for n in paths)} does not provide it "
                   f"(provided there: {sorted(provided[paths[0]]) or 'nothing'})" if paths else "it has no input")
            )
        needed = kind.needs_columns | spec.config.columns_needed()
        if needed - upstream_cols:
            raise WorkflowError(
                f"{path}: stage '{spec.name}' reads column(s) {sorted(needed - upstream_cols)} that not every path "
                f"into it writes (written on every path: {sorted(upstream_cols) or 'none'})"
            )
        reaching: dict[str, frozenset[str]] = {}
        for name in spec.inputs:
            for column, found in origins[name].items():
                reaching[column] = reaching.get(column, frozenset()) | found
        for column, wanted in spec.config.origins_needed().items():
            found = reaching.get(column, frozenset())
            if found != {wanted}:
                raise WorkflowError(
                    f"{path}: stage '{spec.name}' needs the {column} column made by {wanted}, and the stages before "
                    f"it write it with {', '.join(sorted(found)) or 'nothing it can tell'}: name the same model in both"
                )
        origins[spec.name] = reaching | {c: frozenset({o}) for c, o in spec.config.column_origins().items()}
        provided[spec.name] = upstream_caps | kind.provides
        added = spec.config.columns_added()
        columns[spec.name] = upstream_cols | (kind.adds_columns if added is None else (added & kind.adds_columns))
    return order


def _topological(path: str, specs: list[StageSpec]) -> list[StageSpec]:
    """Kahn's algorithm, taking the earliest stage in the file among the ready ones; a stage left over is on a
    cycle, which the error spells out."""
    index = {s.name: i for i, s in enumerate(specs)}
    waiting = {s.name: set(s.inputs) for s in specs}
    order: list[StageSpec] = []
    while waiting:
        ready = [n for n, deps in waiting.items() if not deps]
        if not ready:
            cycle = _cycle(waiting, index)
            raise WorkflowError(f"{path}: stage '{cycle[0]}': its inputs form a cycle: "
                                f"{', '.join(f'{a} reads {b}' for a, b in itertools.pairwise(cycle))}")
        name = min(ready, key=index.__getitem__)
        order.append(specs[index[name]])
        del waiting[name]
        for deps in waiting.values():
            deps.discard(name)
    return order


def _cycle(waiting: dict[str, set[str]], index: dict[str, int]) -> list[str]:
    """One cycle among stages that all wait on each other, each reading the next, from its stage written first."""
    seen: list[str] = []
    node = min(waiting, key=index.__getitem__)
    while node not in seen:
        seen.append(node)
        node = min(waiting[node], key=index.__getitem__)
    loop = seen[seen.index(node):]
    first = loop.index(min(loop, key=index.__getitem__))
    loop = loop[first:] + loop[:first]
    return [*loop, loop[0]]
