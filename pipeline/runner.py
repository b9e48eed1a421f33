"""Run a workflow on Ray into a run directory, skipping stages whose committed output is still valid.

A workflow is a graph of named stages (``schemas.workflow``); they run in its order, every stage after its inputs,
or one alone (``only``: a node of an orchestrator's DAG, whose inputs must be committed). A stage with several
inputs reads the union of their committed data files; each of several sinks publishes its own shard set.

Every stage is checked, not trusted: the runner counts the records that entered a stage (the first outcome row of
each input record, see ``stages.base``) and compares them with the upstream's committed row count; a stage that
loses a record fails, named. Unexpected per-record exceptions are quarantined as ``internal_error`` rows up to
the workflow's ``max_error_fraction``; past it the run fails with the first errors in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmcurate.pipeline import raw_text
from mmcurate.pipeline.fingerprint import FileDigests, stage_fingerprint
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.services import Service
from mmcurate.pipeline.storage import filesystem_threads, is_url, join, stem_of, storage_for
from mmcurate.pipeline.stages_registry import stage_class
from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.record import FIRST_COLUMN, REASON_COLUMN
from mmcurate.schemas.stage_configs import STAGE_KINDS
from mmcurate.schemas.workflow import StageSpec, Workflow, WorkflowError, load_workflow, validated_serve
from mmcurate.stages.base import Block, StageContext

log = logging.getLogger("mmcurate.run")

VERSIONED_PACKAGES = ("mmcurate", "ray", "img2dataset", "webdataset", "open_clip_torch", "torch", "pyarrow", "pillow")


class StageFailed(RuntimeError):
    """A stage broke the contract (lost records) or quarantined too many; nothing of it was committed."""


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "reused"
    stats: dict[str, Any]
    fingerprint: str
    covers: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path | str  # a local path, or the URL of a remote run directory
    stages: list[StageOutcome] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any]:
        return {s.name: s.stats for s in self.stages}


def init_ray(address: str | None) -> None:
    """Local Ray by default; an existing cluster when ``address`` (or RAY_ADDRESS) is given."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # token auth guards a cluster; the local Ray this process starts and owns needs none
        with _environment(RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled")):
            ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = True


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def tally_outcomes(batches: Iterable[pa.Table], is_source: bool) -> dict[str, Any]:
    """in (records that entered), out (outcome rows), kept and rejected by reason, from two small columns."""
    counts: Counter[str] = Counter()
    entered = rows = 0
    for batch in batches:
        rows += batch.num_rows
        entered += sum(1 for first in batch[FIRST_COLUMN].to_pylist() if first)
        counts.update(reason or "kept" for reason in batch[REASON_COLUMN].to_pylist())
    kept = counts.pop("kept", 0)
    # a source's candidates are its rows; a map stage counts each input record once, however many rows it made
    return {"in": rows if is_source else entered, "out": rows, "kept": kept, "rejected": dict(sorted(counts.items()))}


def check_accounting(stage: str, stats: dict[str, Any], upstream_rows: int | None) -> None:
    """The records a stage says entered it must be the rows its upstream committed, and every row it wrote
    must be kept or rejected."""
    if stats["kept"] + sum(stats["rejected"].values()) != stats["out"]:
        raise StageFailed(f"stage {stage}: {stats['out']} outcome rows but kept + rejected = "
                          f"{stats['kept'] + sum(stats['rejected'].values())}")
    if upstream_rows is not None and stats["in"] != upstream_rows:
        raise StageFailed(
            f"stage {stage}: {upstream_rows} records came from upstream but {stats['in']} entered the stage: "
            f"{abs(upstream_rows - stats['in'])} {'lost without an outcome row' if stats['in'] < upstream_rows else 'invented'}"
        )


def check_error_fraction(stage: str, stats: dict[str, Any], limit: float, rejects_dir: Path | str) -> None:
    errors = stats["rejected"].get(Reason.INTERNAL_ERROR.value, 0)
    if not errors or errors <= limit * max(stats["in"], 1):
        return
    import pyarrow.dataset as pads

    store = storage_for(rejects_dir)
    paths, filesystem = store.arrow([join(rejects_dir, n) for n in store.files(str(rejects_dir)) if n.endswith(".parquet")])
    first = (
        pads.dataset(paths, format="parquet", filesystem=filesystem)
        .to_table(columns=["key", "detail"], filter=pads.field("reason") == Reason.INTERNAL_ERROR.value,
                  use_threads=filesystem_threads(rejects_dir))
        .slice(0, 5)
        .to_pylist()
    )
    listed = "\n".join(f"  {row['key']}: {row['detail']}" for row in first)
    raise StageFailed(
        f"stage {stage}: {errors} of {stats['in']} records raised an unexpected error "
        f"(max_error_fraction {limit}); nothing was committed. First errors:\n{listed}\n"
        f"Full tracebacks are in the run log; raise max_error_fraction to accept them as internal_error rejects."
    )


@contextlib.contextmanager
def _served(services: Mapping[str, Service], configs: dict[str, Any], run_dir: RunDir) -> Iterator[dict[str, str]]:
    """Start each service the workflow's ``serve:`` section names; yield the ${...} variables they define."""
    with contextlib.ExitStack() as started:
        variables: dict[str, str] = {}
        for name, config in configs.items():
            # remote: the service's files go to the local cache
            variables.update(started.enter_context(services[name].serve(config, run_dir.local_root)))
        yield variables


def _add_log_file(run_dir: RunDir) -> logging.Handler:
    run_dir.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir.logs_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("mmcurate").addHandler(handler)
    return handler


def run_workflow(
    workflow_path: str | Path,
    run_dir: str | Path,
    *,
    overrides: list[str] = (),
    ray_address: str | None = None,
    services: Mapping[str, Service] | None = None,
    only: str | None = None,
) -> RunResult:
    """``services``: what the workflow's ``serve:`` section may name (``pipeline/services.py``). ``only``: run
    that one stage (a node of the graph), whose inputs must be committed (``InputMissing`` otherwise)."""
    rundir = RunDir(run_dir)
    services = dict(services or {})
    # Validate before anything starts: a bad file fails here, naming the file, stage and field.
    own = run_variables(workflow_path, rundir)
    preview = load_workflow(workflow_path, overrides=list(overrides),
                            variables={**_placeholder_variables(services), **own})
    configs = validated_serve(preview, {name: service.config for name, service in services.items()})
    if only is not None and only not in {s.name for s in preview.stages}:
        raise WorkflowError(f"{preview.path}: --only {only}: no stage of that name "
                            f"(stages: {', '.join(s.name for s in preview.stages)})")
    with rundir.locked():
        handler = _add_log_file(rundir)
        try:
            with _served(services, configs, rundir) as variables:
                workflow = load_workflow(workflow_path, overrides=list(overrides), variables={**variables, **own})
                # what was served, defaults filled in, is what a source's fingerprint covers
                served = {name: config.model_dump(mode="json") for name, config in configs.items()}
                return _execute(workflow.model_copy(update={"serve": served}), rundir, ray_address, only)
        finally:
            logging.getLogger("mmcurate").removeHandler(handler)
            handler.close()
            rundir.upload_logs()


def run_variables(workflow_path: str | Path, rundir: RunDir) -> dict[str, str]:
    """The ${...} variables every run defines, beside its services'."""
    return {
        "run_dir": rundir.url if rundir.remote else str(rundir.local_root.resolve()),  # another stage's artifacts
        "workflow_dir": str(Path(workflow_path).resolve().parent),  # files shipped beside the workflow
    }


def _placeholder_variables(services: Mapping[str, Service]) -> dict[str, str]:
    return {name: value for service in services.values() for name, value in service.placeholders.items()}


def _committed_files(rundir: RunDir, stage: str) -> tuple[list[str], list[int]]:
    """A committed stage's data files (through the generation's real location, whatever the link does later)
    and each one's row count from its parquet footer."""
    import pyarrow.dataset as pads

    files = rundir.committed_files(stage)
    if not files:
        return [], []
    paths, filesystem = rundir.store.arrow(files)
    fragments = list(pads.dataset(paths, format="parquet", filesystem=filesystem).get_fragments())
    if len(fragments) != len(files):
        raise RuntimeError(f"stage {stage}: {len(files)} committed files but {len(fragments)} parquet fragments")
    return files, [fragment.count_rows(use_threads=filesystem_threads(rundir.url)) for fragment in fragments]


@dataclass
class _Planned:
    spec: StageSpec
    role: str
    fingerprint: str
    covers: dict[str, Any]


def plan_fingerprints(workflow: Workflow, files: FileDigests, run_root: str | None, *,
                      save: bool = True) -> list[_Planned]:
    """Every stage's fingerprint, in the workflow's run order: each covers all of its inputs' fingerprints (in the
    order the file lists them), so a change re-runs the stage and its descendants and nothing on other branches."""
    serve = dict(workflow.serve)
    planned: dict[str, _Planned] = {}
    for spec in workflow.stages:
        _refuse_inside_run_dir(spec, run_root)
        role = STAGE_KINDS[spec.kind].role
        fp, covers = stage_fingerprint(
            kind=spec.kind, config=spec.config, upstream=[planned[name].fingerprint for name in spec.inputs],
            files=files, serve=serve if role == "source" else None, run_root=run_root,
        )
        planned[spec.name] = _Planned(spec, role, fp, covers)
    if save:
        files.save()
    return list(planned.values())


def _refuse_inside_run_dir(spec: StageSpec, run_root: str | None) -> None:
    """An input no stage writes (an eval set) inside the run directory would be left out of the fingerprint,
    which takes files there for another stage's output: editing it would not re-run the stage."""
    if not run_root or is_url(run_root):
        return
    root = os.path.realpath(run_root)
    for name, path in spec.config.outside_run_dir().items():
        real = os.path.realpath(path)
        if real == root or real.startswith(root + os.sep):
            raise WorkflowError(f"stage {spec.name}: {name} {path} is inside the run directory {run_root}: files "
                                "there are taken for stages' output and left out of the fingerprint, so a change "
                                "to it would not re-run the stage; keep it outside the run directory")


def _segment_at(planned: list[_Planned], start: int, pending: Callable[[_Planned], bool]) -> list[_Planned]:
    """The stages streamed together from ``start``: it and the ``map`` stages right after it that must run, each
    reading only the one before it (a stage with several inputs reads their committed files). A global stage runs
    alone: what it makes besides rows (a model the next stage loads) exists only once it has committed."""
    segment = [planned[start]]
    if planned[start].role == "global":
        return segment
    for step in planned[start + 1 :]:
        if step.role != "map" or step.spec.inputs != (segment[-1].spec.name,) or not pending(step):
            break
        segment.append(step)
    return segment


class InputMissing(RuntimeError):
    """``--only NODE``: an input of the node is not committed under its current fingerprint, or must run again
    (its raw text was purged and a stage that must run reads it): run it first. Raised before anything changes."""


def _execute(workflow: Workflow, rundir: RunDir, ray_address: str | None, only: str | None = None) -> RunResult:
    started = datetime.now(timezone.utc).isoformat()
    result = RunResult(run_dir=rundir.local_root if not rundir.remote else rundir.url)
    planned = plan_fingerprints(workflow, FileDigests(rundir.cache_dir / "file_digests.json"),
                                None if rundir.remote else str(rundir.local_root))
    by_name = {step.spec.name: step for step in planned}
    # retain_raw_text: purged stages that a stage which must run reads run again (purge.rerun, as plan shows)
    purge = raw_text.Purge(workflow, planned, rundir)

    def pending(step: _Planned) -> bool:
        return step.spec.name in purge.rerun or not rundir.is_done(step.spec.name, step.fingerprint)

    if only is not None:  # before anything is touched: a node that cannot run changes nothing
        _check_inputs_committed(workflow, by_name[only], by_name, rundir, purge.rerun)
    ray_started = False
    i = 0
    while i < len(planned):
        step = planned[i]
        if only is not None and step.spec.name != only:
            i += 1
            continue
        if not pending(step):
            log.info("stage %s: already done (fingerprint %s), reusing", step.spec.name, step.fingerprint)
            rundir.discard_progress(step.spec.name, step.fingerprint)
            result.stages.append(StageOutcome(step.spec.name, "reused", rundir.marker(step.spec.name)["stats"],
                                              step.fingerprint, step.covers))
            i += 1
        else:
            if not ray_started:
                init_ray(ray_address)
                ray_started = True
            if step.role == "sink":
                segment = [step]
                stats = [_run_sink(workflow, step, rundir)]
            elif step.role in ("source", "map", "global"):
                segment = [step] if only is not None else _segment_at(planned, i, pending)
                stats = _run_segment(workflow, segment, rundir)
            else:
                raise StageFailed(f"stage {step.spec.name}: role {step.role} has no runner")
            for done, stage_stats in zip(segment, stats):
                result.stages.append(StageOutcome(done.spec.name, "ran", stage_stats, done.fingerprint, done.covers))
            i += len(segment)
        _write_stats(workflow, rundir, result)
    if only is None or by_name[only].role == "sink":
        # the sinks have settled (ran or reused): DIR/shards shows the workflow's shard sets, whatever an earlier
        # workflow's sinks left there (a reused sink is linked under a new layout, a removed one unlinked)
        rundir.link_shard_sets([s.name for s in workflow.sinks])
    purge.run()
    _write_manifest(workflow, rundir, result, planned, ray_address, started)
    return result


def _check_inputs_committed(workflow: Workflow, step: _Planned, by_name: dict[str, _Planned], rundir: RunDir,
                            rerun: Mapping[str, str]) -> None:
    """``--only``: every input committed under its current fingerprint and not due to run again (``rerun``: its
    raw text purged), else ``InputMissing`` naming the first that is not."""
    for name in step.spec.inputs:
        if not rundir.is_done(name, by_name[name].fingerprint):
            state = "committed under another fingerprint (stale)" if rundir.marker(name) else "not committed"
        elif name in rerun:
            state = f"due to run again ({rerun[name]})"
        else:
            continue
        raise InputMissing(f"{workflow.path}: stage '{step.spec.name}': input '{name}' is {state}; run "
                           f"'--only {name}' first (mmcurate plan lists the order)")


def _write_stats(workflow: Workflow, rundir: RunDir, result: RunResult) -> None:
    """DIR/stats.json: every stage of the workflow that has stats, in run order; a node run alone (``--only``)
    updates its own entry and keeps the others'."""
    earlier = rundir.read_json("stats.json") or {}
    ours = result.stats
    merged = {s.name: ours.get(s.name, earlier.get(s.name)) for s in workflow.stages}
    rundir.write_json("stats.json", {k: v for k, v in merged.items() if v is not None}, sort_keys=False)


def _context(spec: StageSpec, fp: str, rundir: RunDir) -> StageContext:
    return StageContext(name=spec.name, config_hash=spec.config_hash, work_dir=rundir.begin_stage(spec.name, fp),
                        progress_dir=rundir.progress_dir(spec.name, fp))


def _input_blocks(rundir: RunDir, inputs: tuple[str, ...]) -> tuple[list[Block], int]:
    """The committed data files of a stage's inputs as blocks, and their row count. A block is named by its file
    (the upstream's block id); under fan-in, by input and file, so two inputs' blocks never share a name."""
    blocks: list[Block] = []
    rows = 0
    for name in inputs:
        files, counts = _committed_files(rundir, name)
        rows += sum(counts)
        blocks += [Block(id=stem_of(f) if len(inputs) == 1 else f"{name}--{stem_of(f)}", path=f, kind="records",
                         rows=n) for f, n in zip(files, counts)]
    return blocks, rows


def _run_segment(workflow: Workflow, segment: list[_Planned], rundir: RunDir) -> list[dict]:
    """Stream a source (or a committed upstream) through the segment's stages, block by block on Ray workers,
    then check and commit each stage in order. A global stage first summarizes its whole input (``_summary``)."""
    from mmcurate.pipeline.stream import StageRun, block_counts, link_blocks, run_blocks, shared_blocks

    t0 = time.perf_counter()
    for step in segment:
        log.info("stage %s: running (fingerprint %s)", step.spec.name, step.fingerprint)
    contexts = [_context(step.spec, step.fingerprint, rundir) for step in segment]
    runs = [
        StageRun(cls=stage_class(step.spec.kind), config=step.spec.config, name=step.spec.name,
                 config_hash=step.spec.config_hash,
                 blocks_dir=join(rundir.progress_location(step.spec.name, step.fingerprint), "blocks"),
                 guard=rundir.guard)
        for step, ctx in zip(segment, contexts)
    ]
    if segment[0].role == "global":
        summary = _summary(runs[0], contexts[0], [b.path for b in _input_blocks(rundir, segment[0].spec.inputs)[0]])
        runs[0] = dataclasses.replace(runs[0], summary=summary)
    is_source = segment[0].role == "source"
    if is_source:
        blocks = runs[0].cls(runs[0].config, runs[0].name).plan(contexts[0])
        # remote: the candidate chunks planned on the driver go where workers on any node can read them
        blocks = shared_blocks(blocks, rundir.work_root, join(rundir.progress_location(segment[0].spec.name,
                                                                                        segment[0].fingerprint), "inputs"))
        upstream_rows = None
    else:
        blocks, upstream_rows = _input_blocks(rundir, segment[0].spec.inputs)
    if not rundir.remote:
        for ctx in contexts:
            (ctx.progress_dir / "blocks").mkdir(parents=True, exist_ok=True)
    run_blocks(runs, blocks, source=is_source, log=log)
    all_stats = []
    for step, run, ctx in zip(segment, runs, contexts):
        stats = block_counts(run, blocks)
        check_accounting(step.spec.name, stats, upstream_rows)
        staged = rundir.staging_location(ctx.work_dir)
        link_blocks(run, blocks, staged)
        _link_artifacts(ctx.progress_dir / ARTIFACTS, staged)
        check_error_fraction(step.spec.name, stats, workflow.max_error_fraction, join(staged, "rejects"))
        stats["seconds"] = round(time.perf_counter() - t0, 2)  # a streamed stage shares its segment's time
        _commit(rundir, step, ctx.work_dir, stats, sink=False, summary=run.summary)
        log.info("stage %s: in=%d out=%d kept=%d rejected=%s", step.spec.name, stats["in"], stats["out"],
                 stats["kept"], stats["rejected"])
        all_stats.append(stats)
        upstream_rows = sum(_committed_files(rundir, step.spec.name)[1])
    return all_stats


ARTIFACTS = "artifacts"  # what a global stage made besides rows (a trained model): DIR/<stage>/artifacts/
SUMMARY = "summary.json"


def _summary(run: Any, ctx: StageContext, files: list[str]) -> dict[str, Any]:
    """A global stage's summary of its whole input: computed over a Ray Dataset of the upstream's committed files,
    then kept in the stage's progress so that a killed run does not compute it again."""
    import ray

    from mmcurate.pipeline.rundir import atomic_write_json

    saved = ctx.progress_dir / SUMMARY
    if saved.exists():
        log.info("stage %s: summary from an earlier run", run.name)
        return json.loads(saved.read_text())
    stage = run.cls(run.config, run.name)
    if files:
        paths, filesystem = storage_for(files[0]).arrow(files)
        dataset = ray.data.read_parquet(paths, filesystem=filesystem)
    else:
        dataset = ray.data.from_items([])
    (ctx.progress_dir / ARTIFACTS).mkdir(parents=True, exist_ok=True)
    summary = stage.summarize(dataset, ctx)
    atomic_write_json(saved, summary)
    log.info("stage %s: summary %s", run.name, json.dumps(summary, sort_keys=True)[:500])
    return summary


def _link_artifacts(artifacts: Path, staged: str) -> None:
    """A global stage's artifacts into its generation (``DIR/<stage>/artifacts/``): hard links, or uploads when
    the run directory is remote."""
    if not artifacts.is_dir():
        return
    files = [p for p in sorted(artifacts.rglob("*")) if p.is_file()]
    if not files:
        return
    target = join(staged, ARTIFACTS)
    if is_url(target):
        storage_for(target).upload([(p, join(target, p.relative_to(artifacts).as_posix())) for p in files])
        return
    for path in files:
        dest = Path(target) / path.relative_to(artifacts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # another file system
            shutil.copy2(path, dest)


def _commit(rundir: RunDir, step: _Planned, work: Path, stats: dict[str, Any], *, sink: bool,
            summary: dict[str, Any] | None = None, shard_sets: tuple[str, ...] = ()) -> None:
    marker = {
        "stage": step.spec.name,
        "kind": step.spec.kind,
        "fingerprint": step.fingerprint,
        "config_hash": step.spec.config_hash,
        # what explain cites; never the whole config (seed URLs may carry credentials)
        "decided_by": {**step.spec.config.decision_fields(), **({"summary": summary} if summary else {})},
        "stats": stats,
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    rundir.commit_stage(step.spec.name, work, marker, sink=sink, shard_sets=shard_sets)


def _run_sink(workflow: Workflow, step: _Planned, rundir: RunDir) -> dict:
    t0 = time.perf_counter()
    log.info("stage %s: running (fingerprint %s)", step.spec.name, step.fingerprint)
    from mmcurate.pipeline.sink import run_sink

    ctx = _context(step.spec, step.fingerprint, rundir)
    stage = stage_class(step.spec.kind)(step.spec.config, step.spec.name)
    blocks, upstream_rows = _input_blocks(rundir, step.spec.inputs)
    files = [b.path for b in blocks]
    staged = rundir.staging_location(ctx.work_dir)
    stats = run_sink(stage, step.spec.config_hash, files, upstream_rows, staged,
                     rundir.progress_location(step.spec.name, step.fingerprint), log)
    check_accounting(step.spec.name, stats, upstream_rows)
    check_error_fraction(step.spec.name, stats, workflow.max_error_fraction, join(staged, "rejects"))
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    # one sink: DIR/shards as always; several: DIR/shards/<sink name>/ each, the other sinks' kept in place
    _commit(rundir, step, ctx.work_dir, stats, sink=True, shard_sets=tuple(s.name for s in workflow.sinks))
    log.info("stage %s: in=%d out=%d kept=%d rejected=%s", step.spec.name, stats["in"], stats["out"],
             stats["kept"], stats["rejected"])
    return stats


def _write_manifest(workflow: Workflow, rundir: RunDir, result: RunResult, planned: list[_Planned],
                    ray_address: str | None, started: str):
    """Every stage of the workflow: what this invocation did with it (ran, reused) or, for the stages a
    ``--only`` run left alone, whether they are committed under their current fingerprint."""
    outcomes = {s.name: s for s in result.stages}
    rundir.write_json(
        "manifest.json",
        {
            "workflow": {"name": workflow.name, "path": str(Path(workflow.path).resolve()), "sha256": workflow.sha256},
            "stages": [
                {
                    "name": step.spec.name,
                    "kind": step.spec.kind,
                    "inputs": list(step.spec.inputs),
                    "config_hash": step.spec.config_hash,
                    "fingerprint": step.fingerprint,
                    "covers": {k: v for k, v in step.covers.items() if k != "config"},
                    "status": outcomes[step.spec.name].status if step.spec.name in outcomes else
                    ("committed" if rundir.is_done(step.spec.name, step.fingerprint) else "pending"),
                }
                for step in planned
            ],
            "max_error_fraction": workflow.max_error_fraction,
            "versions": _versions(),
            "ray": "cluster" if (ray_address or os.environ.get("RAY_ADDRESS")) else "local",
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(),
        },
    )
