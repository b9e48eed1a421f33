"""Run a workflow on Ray into a run directory, skipping stages whose committed output is still valid.

Every stage is checked, not trusted: the runner counts the records that entered a stage (the first outcome row of
each input record, see ``stages.base``) and compares them with the upstream's committed row count; a stage that
loses a record fails, named. Unexpected per-record exceptions are quarantined as ``internal_error`` rows up to
the workflow's ``max_error_fraction``; past it the run fails with the first errors in the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmcurate.pipeline.fingerprint import FileDigests, stage_fingerprint
from mmcurate.pipeline.rundir import RunDir, atomic_write_json
from mmcurate.pipeline.stages_registry import stage_class
from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.record import DETAIL_COLUMN, FIRST_COLUMN, REASON_COLUMN, REJECT_SCHEMA
from mmcurate.schemas.stage_configs import STAGE_KINDS
from mmcurate.schemas.workflow import StageSpec, Workflow, load_workflow
from mmcurate.stages.base import StageContext, split_outcomes

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
    run_dir: Path
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


def _reject_rows(outcomes: pa.Table, stage: str, config_hash: str) -> pa.Table:
    n = outcomes.num_rows
    return pa.table(
        {
            "key": outcomes["key"],
            "parent": outcomes["parent"],
            "url": outcomes["url"],
            "page_url": outcomes["page_url"],
            "stage": pa.array([stage] * n, pa.string()),
            "reason": outcomes[REASON_COLUMN],
            "detail": outcomes[DETAIL_COLUMN],
            "config_hash": pa.array([config_hash] * n, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def _kept_records(table: pa.Table) -> pa.Table:
    return split_outcomes(table)[0]


def _reject_rows_of(table: pa.Table, stage: str, config_hash: str) -> pa.Table:
    return _reject_rows(split_outcomes(table)[1], stage, config_hash)


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


def _count_outcomes(outcomes: Any, is_source: bool) -> dict[str, Any]:
    columns = outcomes.select_columns([REASON_COLUMN, FIRST_COLUMN])
    return tally_outcomes(columns.iter_batches(batch_format="pyarrow", batch_size=65536), is_source)


def _run_outcome_stage(spec: StageSpec, stage: Any, upstream: Any, work: Path, ctx: StageContext) -> dict[str, Any]:
    # Kept records and reject rows are written by Ray workers; the driver only sees the reason column.
    outcomes = stage.apply(upstream, ctx).materialize()
    (work / "data").mkdir(parents=True, exist_ok=True)
    outcomes.map_batches(_kept_records, batch_format="pyarrow").write_parquet(str(work / "data"))
    outcomes.map_batches(
        _reject_rows_of, fn_kwargs={"stage": spec.name, "config_hash": spec.config_hash}, batch_format="pyarrow"
    ).write_parquet(str(work / "rejects"))
    return _count_outcomes(outcomes, STAGE_KINDS[spec.kind].role == "source")


def _run_sink_stage(spec: StageSpec, stage: Any, upstream: Any, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from mmcurate.schemas.record import outcome_table

    infos, refused = stage.write(upstream, work / "shards")
    written = sum(i.samples for i in infos)
    counts = Counter(r[REASON_COLUMN] for r in refused)
    if refused:
        rows = _reject_rows(outcome_table(refused), spec.name, spec.config_hash)
        pq.write_table(rows, work / "rejects" / "part-00000.parquet")
    return {
        "in": written + len(refused),
        "out": written + len(refused),
        "kept": written,
        "rejected": dict(sorted(counts.items())),
        "shards": len(infos),
        "shard_bytes": sum(i.bytes for i in infos),
    }


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


def check_error_fraction(stage: str, stats: dict[str, Any], limit: float, rejects_dir: Path) -> None:
    errors = stats["rejected"].get(Reason.INTERNAL_ERROR.value, 0)
    if not errors or errors <= limit * max(stats["in"], 1):
        return
    import pyarrow.dataset as pads

    first = (
        pads.dataset(str(rejects_dir), format="parquet")
        .to_table(columns=["key", "detail"], filter=pads.field("reason") == Reason.INTERNAL_ERROR.value)
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
def _served(serve: Any, run_dir: RunDir) -> Iterator[dict[str, str]]:
    """Start what the workflow's ``serve:`` section asks for; yield the ${...} variables it defines."""
    if serve is None or serve.demo_site is None:
        yield {}
        return
    from mmcurate.pipeline.demo import prepared_demo_site

    with prepared_demo_site(serve.demo_site, run_dir.root) as variables:
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
) -> RunResult:
    rundir = RunDir(run_dir)
    # Validate before anything starts: a bad file fails here, naming the file, stage and field.
    preview = load_workflow(workflow_path, overrides=list(overrides), variables=_placeholder_variables())
    with rundir.locked():
        handler = _add_log_file(rundir)
        try:
            with _served(preview.serve, rundir) as variables:
                workflow = load_workflow(workflow_path, overrides=list(overrides), variables=variables)
                return _execute(workflow, rundir, ray_address)
        finally:
            logging.getLogger("mmcurate").removeHandler(handler)
            handler.close()


def _placeholder_variables() -> dict[str, str]:
    from mmcurate.pipeline.demo import DEMO_PLACEHOLDERS

    return dict(DEMO_PLACEHOLDERS)


def _upstream(rundir: RunDir, previous: StageSpec) -> tuple[Any, int]:
    """The previous stage's committed records as a Dataset, and their row count from the parquet footers."""
    import pyarrow.dataset as pads
    import ray

    from mmcurate.schemas.record import RECORD_SCHEMA

    data = Path(os.path.realpath(rundir.data_dir(previous.name)))  # this generation, whatever the link does later
    files = sorted(str(p) for p in data.glob("*.parquet"))
    if not files:  # the previous stage kept nothing
        return ray.data.from_arrow(RECORD_SCHEMA.empty_table()), 0
    return ray.data.read_parquet(files), pads.dataset(files, format="parquet").count_rows()


def _execute(workflow: Workflow, rundir: RunDir, ray_address: str | None) -> RunResult:
    started = datetime.now(timezone.utc).isoformat()
    result = RunResult(run_dir=rundir.root)
    files = FileDigests(rundir.cache_dir / "file_digests.json")
    serve = workflow.serve.model_dump(mode="json")
    previous: StageOutcome | None = None
    previous_spec: StageSpec | None = None
    ray_started = False
    for spec in workflow.stages:
        role = STAGE_KINDS[spec.kind].role
        fp, covers = stage_fingerprint(
            kind=spec.kind, config=spec.config, upstream=[previous.fingerprint] if previous else [],
            files=files, serve=serve if role == "source" else None,
        )
        files.save()
        if rundir.is_done(spec.name, fp):
            marker = rundir.marker(spec.name)
            log.info("stage %s: already done (fingerprint %s), reusing", spec.name, fp)
            rundir.discard_progress(spec.name, fp)
            outcome = StageOutcome(spec.name, "reused", marker["stats"], fp, covers)
        else:
            if not ray_started:
                init_ray(ray_address)
                ray_started = True
            log.info("stage %s: running (fingerprint %s)", spec.name, fp)
            outcome = StageOutcome(spec.name, "ran", _run_stage(workflow, spec, fp, rundir, previous_spec), fp, covers)
            log.info("stage %s: in=%d out=%d kept=%d rejected=%s", spec.name, outcome.stats["in"],
                     outcome.stats["out"], outcome.stats["kept"], outcome.stats["rejected"])
        result.stages.append(outcome)
        previous, previous_spec = outcome, spec
        atomic_write_json(rundir.root / "stats.json", result.stats, sort_keys=False)  # stages in run order
    _write_manifest(workflow, rundir, result, ray_address, started)
    return result


def _run_stage(workflow: Workflow, spec: StageSpec, fp: str, rundir: RunDir, previous: StageSpec | None) -> dict:
    t0 = time.perf_counter()
    work = rundir.begin_stage(spec.name)
    ctx = StageContext(name=spec.name, config_hash=spec.config_hash, work_dir=work,
                       progress_dir=rundir.progress_dir(spec.name, fp))
    stage = stage_class(spec.kind)(spec.config, spec.name)
    upstream, upstream_rows = _upstream(rundir, previous) if previous else (None, None)
    is_sink = STAGE_KINDS[spec.kind].role == "sink"
    if is_sink:
        stats = _run_sink_stage(spec, stage, upstream, work)
    else:
        stats = _run_outcome_stage(spec, stage, upstream, work, ctx)
    check_accounting(spec.name, stats, upstream_rows)
    check_error_fraction(spec.name, stats, workflow.max_error_fraction, work / "rejects")
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    marker = {
        "stage": spec.name,
        "kind": spec.kind,
        "fingerprint": fp,
        "config_hash": spec.config_hash,
        "stats": stats,
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    rundir.commit_stage(spec.name, work, marker, sink=is_sink)
    return stats


def _write_manifest(workflow: Workflow, rundir: RunDir, result: RunResult, ray_address: str | None, started: str):
    atomic_write_json(
        rundir.root / "manifest.json",
        {
            "workflow": {"name": workflow.name, "path": str(Path(workflow.path).resolve()), "sha256": workflow.sha256},
            "stages": [
                {
                    "name": s.name,
                    "kind": spec.kind,
                    "config_hash": spec.config_hash,
                    "fingerprint": s.fingerprint,
                    "covers": {k: v for k, v in s.covers.items() if k != "config"},
                    "status": s.status,
                }
                for s, spec in zip(result.stages, workflow.stages)
            ],
            "max_error_fraction": workflow.max_error_fraction,
            "versions": _versions(),
            "ray": "cluster" if (ray_address or os.environ.get("RAY_ADDRESS")) else "local",
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(),
        },
    )
