"""What a run of a workflow would do, node by node, without running anything: ``mmcurate plan``.

Each node is a stage of the workflow's graph with its inputs, its fingerprint (computed exactly as a run computes
it: the same variables, file digests and code) and an action: ``reuse`` (committed under that fingerprint, every
listed file intact, and not a purged stage the run must run again: ``raw_text.purged_to_rerun``, which the runner
reads too) or ``run``, with why. The nodes come in an order that runs every node after its inputs, and
each carries the command that runs it alone (``mmcurate run WORKFLOW --only NODE``): an orchestrator (Airflow,
Dagster, Prefect) makes one task per node and one dependency per input. Three renderings: text for people, JSON
for tools, Mermaid for the README.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmcurate.pipeline.fingerprint import FileDigests
from mmcurate.pipeline.raw_text import purged_to_rerun
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.runner import plan_fingerprints, run_variables
from mmcurate.pipeline.services import Service
from mmcurate.schemas.stage_configs import STAGE_KINDS
from mmcurate.schemas.workflow import Workflow, load_workflow, validated_serve


@dataclass
class Node:
    name: str
    kind: str
    role: str
    inputs: list[str]
    fingerprint: str
    action: str  # "run" | "reuse"
    why: str
    command: list[str]  # runs this node alone; exit codes: 0 done or reused, 1 failed, 2 invalid workflow, 3 input missing
    shards: str | None = None  # a sink's shard folder, relative to the run directory


@dataclass
class Plan:
    workflow: str
    run_dir: str
    nodes: list[Node] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"workflow": self.workflow, "run_dir": self.run_dir,
                           "nodes": [asdict(n) for n in self.nodes]}, indent=2)

    def to_text(self) -> str:
        width = max(len(n.name) for n in self.nodes)
        lines = [f"workflow {self.workflow}", f"run directory {self.run_dir}", ""]
        for n in self.nodes:
            reads = f"<- {', '.join(n.inputs)}" if n.inputs else "(source)"
            where = f" -> {n.shards}/" if n.shards else ""
            lines.append(f"{n.name:<{width}}  {n.kind:<12} {reads:<24} {n.action:<6} {n.why}{where}")
        runs = sum(n.action == "run" for n in self.nodes)
        lines += ["", f"{runs} to run, {len(self.nodes) - runs} to reuse"]
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """A flowchart: sources as stadiums, sinks as cylinders (a shard set each), edges from input to reader."""
        shapes = {"source": ('(["', '"])'), "sink": ('[("', '")]'), "global": ('[["', '"]]'), "map": ('["', '"]')}
        # an id per node by its position, so that 'a-b' and 'a_b' stay two nodes (a Mermaid id may hold neither a
        # '-' nor be a keyword such as 'end'); the name after it only reads better
        ids = {n.name: f"n{i}_{n.name.replace('-', '_')}" for i, n in enumerate(self.nodes)}
        lines = ["flowchart LR"]
        for n in self.nodes:
            opening, closing = shapes[n.role]
            label = f"{n.name}<br/><i>{n.kind}</i>" + (f"<br/>{n.shards}/" if n.shards else "")
            lines.append(f"  {ids[n.name]}{opening}{label}{closing}")
        for n in self.nodes:
            lines += [f"  {ids[i]} --> {ids[n.name]}" for i in n.inputs]
        return "\n".join(lines)


def plan(workflow_path: str | Path, run_dir: str | Path, *, overrides: list[str] = (),
         services: Mapping[str, Service] | None = None) -> Plan:
    """The plan of ``workflow_path`` in ``run_dir``; reads the run directory, writes nothing, starts nothing."""
    rundir = RunDir(run_dir)
    services = dict(services or {})
    own = run_variables(workflow_path, rundir)
    placeholders = {k: v for s in services.values() for k, v in s.placeholders.items()}
    preview = load_workflow(workflow_path, overrides=list(overrides), variables={**placeholders, **own})
    configs = validated_serve(preview, {name: s.config for name, s in services.items()})
    variables = dict(placeholders)
    for name, config in configs.items():
        if services[name].variables is not None:
            variables.update(services[name].variables(config, rundir.local_root))
    workflow = load_workflow(workflow_path, overrides=list(overrides), variables={**variables, **own})
    workflow = workflow.model_copy(update={"serve": {n: c.model_dump(mode="json") for n, c in configs.items()}})
    return plan_of(workflow, rundir, str(workflow_path), str(run_dir), overrides)


def plan_of(workflow: Workflow, rundir: RunDir, workflow_arg: str, run_dir_arg: str,
            overrides: list[str] = ()) -> Plan:
    planned = plan_fingerprints(workflow, FileDigests(rundir.cache_dir / "file_digests.json"),
                                None if rundir.remote else str(rundir.local_root), save=False)
    earlier = {s["name"]: s for s in (rundir.read_json("manifest.json") or {}).get("stages", [])}
    several_sinks = len(workflow.sinks) > 1
    result = Plan(workflow=workflow_arg, run_dir=run_dir_arg)
    rerun = purged_to_rerun(planned, rundir)  # what the runner runs again of the purged stages (retain_raw_text)
    actions: dict[str, str] = {}
    for step in planned:
        name = step.spec.name
        if not rundir.is_done(name, step.fingerprint):
            action, why = "run", _why(step, rundir.marker(name), earlier.get(name), actions)
        elif name in rerun:
            action, why = "run", rerun[name]
        else:
            action, why = "reuse", f"committed under fingerprint {step.fingerprint}"
        # a purged stage that runs again keeps its fingerprint: it is no cause for a stage reading it to run
        actions[name] = "again" if name in rerun else action
        command = ["mmcurate", "run", workflow_arg, "--run-dir", run_dir_arg, "--only", name,
                   *[part for item in overrides for part in ("--set", item)]]
        shards = (f"shards/{name}" if several_sinks else "shards") if step.role == "sink" else None
        result.nodes.append(Node(name=name, kind=step.spec.kind, role=STAGE_KINDS[step.spec.kind].role,
                                 inputs=list(step.spec.inputs), fingerprint=step.fingerprint, action=action, why=why,
                                 command=command, shards=shards))
    return result


def _why(step: Any, marker: dict[str, Any] | None, earlier: dict[str, Any] | None, actions: dict[str, str]) -> str:
    """Why a node runs: the first of its causes, upstream first (a re-running input re-runs it whatever else)."""
    rerun = [name for name in step.spec.inputs if actions.get(name) == "run"]
    if rerun:
        return f"input {rerun[0]!r} runs" if len(rerun) == 1 else f"inputs {', '.join(map(repr, rerun))} run"
    if marker is None:
        return "never committed"
    if marker.get("fingerprint") == step.fingerprint:
        return "a file of its committed output is missing or changed"
    if marker.get("config_hash") != step.spec.config_hash:
        return "its config changed"
    before = (earlier or {}).get("covers") or {}
    if before.get("code") not in (None, step.covers["code"]):
        return "its code changed"
    changed = sorted(p for p, d in step.covers["files"].items() if before.get("files", {}).get(p) not in (None, d))
    if changed:
        return f"input file bytes changed: {', '.join(changed)}"
    if before.get("serve") != step.covers["serve"] and step.covers["serve"] is not None:
        return "the served site's config changed"
    if before.get("upstream") not in (None, step.covers["upstream"]):
        return "an input was re-run since"
    return "committed under another fingerprint"
