"""Run a workflow on Ray into a run directory, skipping stages whose committed output is still valid."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmcurate.pipeline.rundir import RunDir, atomic_write_json
from mmcurate.pipeline.stages_registry import stage_class
from mmcurate.schemas.record import DETAIL_COLUMN, REASON_COLUMN, REJECT_SCHEMA
from mmcurate.schemas.stage_configs import STAGE_KINDS
from mmcurate.schemas.workflow import StageSpec, Workflow, load_workflow
from mmcurate.stages.base import StageContext, split_outcomes

log = logging.getLogger("mmcurate.run")

# Bumped when a stage's behaviour changes in a way that makes old outputs wrong.
PIPELINE_VERSION = "1"
VERSIONED_PACKAGES = ("mmcurate", "ray", "img2dataset", "webdataset", "open_clip_torch", "torch", "pyarrow", "pillow")


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "reused"
    stats: dict[str, Any]
    fingerprint: str


@dataclass
class RunResult:
    run_dir: Path
    stages: list[StageOutcome] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any]:
        return {s.name: s.stats for s in self.stages}


def fingerprint(upstream: str, spec: StageSpec) -> str:
    return hashlib.sha256(f"{PIPELINE_VERSION}|{upstream}|{spec.config_hash}".encode()).hexdigest()[:16]


def init_ray(address: str | None) -> None:
    """Local Ray by default; an existing cluster when ``address`` (or RAY_ADDRESS) is given."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = True


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


def _run_outcome_stage(spec: StageSpec, stage: Any, upstream: Any, work: Path, ctx: StageContext) -> dict[str, Any]:
    # Kept records and reject rows are written by Ray workers; the driver only sees the reason column.
    outcomes = stage.apply(upstream, ctx).materialize()
    (work / "stage" / "data").mkdir(parents=True, exist_ok=True)
    outcomes.map_batches(_kept_records, batch_format="pyarrow").write_parquet(str(work / "stage" / "data"))
    outcomes.map_batches(
        _reject_rows_of, fn_kwargs={"stage": spec.name, "config_hash": spec.config_hash}, batch_format="pyarrow"
    ).write_parquet(str(work / "rejects"))
    counts: Counter[str] = Counter()
    for batch in outcomes.select_columns([REASON_COLUMN]).iter_batches(batch_format="pyarrow", batch_size=65536):
        counts.update(reason or "kept" for reason in batch[REASON_COLUMN].to_pylist())
    kept = counts.pop("kept", 0)
    return {"in": kept + sum(counts.values()), "kept": kept, "rejected": dict(sorted(counts.items()))}


def _run_sink_stage(spec: StageSpec, stage: Any, upstream: Any, work: Path) -> tuple[dict[str, Any], Path]:
    import pyarrow.parquet as pq

    shards_dir = work / "shards"
    infos, refused = stage.write(upstream, shards_dir)
    written = sum(i.samples for i in infos)
    counts = Counter(r[REASON_COLUMN] for r in refused)
    if refused:
        from mmcurate.schemas.record import outcome_table

        pq.write_table(_reject_rows(outcome_table(refused), spec.name, spec.config_hash), work / "rejects" / "part-00000.parquet")
    stats = {
        "in": written + len(refused),
        "kept": written,
        "rejected": dict(sorted(counts.items())),
        "shards": len(infos),
        "shard_bytes": sum(i.bytes for i in infos),
    }
    return stats, shards_dir


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
    from mmcurate.pipeline.demo import DEMO_VARIABLES

    return {name: "http://127.0.0.1:1" for name in DEMO_VARIABLES}


def _upstream(rundir: RunDir, previous: StageSpec) -> Any:
    import ray

    from mmcurate.schemas.record import RECORD_SCHEMA

    data = rundir.data_dir(previous.name)
    if not any(data.glob("*.parquet")):  # the previous stage kept nothing
        return ray.data.from_arrow(RECORD_SCHEMA.empty_table())
    return ray.data.read_parquet(str(data))


def _execute(workflow: Workflow, rundir: RunDir, ray_address: str | None) -> RunResult:

    started = datetime.now(timezone.utc).isoformat()
    result = RunResult(run_dir=rundir.root)
    upstream_fp = ""
    previous: StageSpec | None = None
    ray_started = False
    for spec in workflow.stages:
        fp = fingerprint(upstream_fp, spec)
        if rundir.is_done(spec.name, fp):
            marker = rundir.marker(spec.name)
            log.info("stage %s: already done (fingerprint %s), reusing", spec.name, fp)
            result.stages.append(StageOutcome(spec.name, "reused", marker["stats"], fp))
        else:
            if not ray_started:
                init_ray(ray_address)
                ray_started = True
            log.info("stage %s: running (fingerprint %s)", spec.name, fp)
            t0 = time.perf_counter()
            work = rundir.begin_stage(spec.name)
            ctx = StageContext(name=spec.name, config_hash=spec.config_hash, work_dir=work / "stage",
                               progress_dir=rundir.progress_dir(spec.name, fp))
            stage = stage_class(spec.kind)(spec.config, spec.name)
            upstream = _upstream(rundir, previous) if previous else None
            shards = None
            if STAGE_KINDS[spec.kind].role == "sink":
                stats, shards = _run_sink_stage(spec, stage, upstream, work)
            else:
                stats = _run_outcome_stage(spec, stage, upstream, work, ctx)
            stats["seconds"] = round(time.perf_counter() - t0, 2)
            marker = {
                "stage": spec.name,
                "kind": spec.kind,
                "fingerprint": fp,
                "config_hash": spec.config_hash,
                "stats": stats,
                "finished": datetime.now(timezone.utc).isoformat(),
            }
            rundir.commit_stage(spec.name, work, marker, shards=shards)
            result.stages.append(StageOutcome(spec.name, "ran", stats, fp))
            log.info("stage %s: in=%d kept=%d rejected=%s", spec.name, stats["in"], stats["kept"], stats["rejected"])
        upstream_fp, previous = fp, spec
        atomic_write_json(rundir.root / "stats.json", result.stats, sort_keys=False)  # stages in run order
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
                    "status": s.status,
                }
                for s, spec in zip(result.stages, workflow.stages)
            ],
            "versions": _versions(),
            "pipeline_version": PIPELINE_VERSION,
            "ray": "cluster" if (ray_address or os.environ.get("RAY_ADDRESS")) else "local",
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(),
        },
    )
    return result
