"""``mmcurate label export DIR --project NAME``: the chosen samples as Label Studio tasks, with predictions.

Idempotent by sample key: the project's tasks are listed first (``project_tasks``) and a key already there is not
imported again, so re-running an export (or one interrupted halfway) adds only what is missing. Tasks go in
requests of at most ``max_tasks`` tasks and ``max_mb`` MB (Label Studio refuses imports past 250K tasks or 200 MB
per request); a progress bar counts them. The export holds the run directory's lock (one export or import or run
of a DIR at a time); two run directories exporting into one project at once can still both add a key, so every
export ends by deleting the duplicates nobody has touched (``drop_duplicates``; after importing, the project is
listed again): a killed export's are deleted by the next one. What an export counts as added is what it made
and kept.

Every selected sample whose task is on the server (added now or already there) is recorded in
``DIR/labels/exported.parquet`` (key, project, task id, the score, threshold and model shown), after each request,
so a killed export loses no row; ``--format json`` records its tasks too (no task id: they are imported by hand).
The report judges the filter by these scores.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from mmcurate.pipeline.labeling.config import (MODALITIES, config_version, labeling_config, project_name,
                                               project_title)
from mmcurate.pipeline.labeling.select import Candidate, LabelingError, Selection, candidates, choose, media
from mmcurate.pipeline.labeling.store import EXPORTED_SCHEMA, labels_dir, merge_exported, read, require_run
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.labeling.server import client
from mmcurate.pipeline.labeling.tasks import chunks, task
from mmcurate.stages.files import atomic_write_bytes

log = logging.getLogger("mmcurate.label")


@dataclass
class ExportResult:
    selected: int = 0
    added: dict[str, int] = field(default_factory=dict)  # project title -> tasks added (that outlived the cleanup)
    already: dict[str, int] = field(default_factory=dict)  # project title -> selected tasks already there
    removed: dict[str, int] = field(default_factory=dict)  # project title -> duplicate tasks this export deleted
    files: list[str] = field(default_factory=list)  # --format json


def _tasks(run_dir: str, chosen: list[Candidate]) -> list[dict]:
    """The tasks of ``chosen`` whose records the run still has (media included), in ``chosen``'s order."""
    by_key = {c.key: c for c in chosen}
    made = {record["key"]: task(by_key[record["key"]], record) for record in media(run_dir, list(by_key))
            if record.get(by_key[record["key"]].modality) is not None}
    return [made[c.key] for c in chosen if c.key in made]


def _ranked_as_shown(run_dir: str, project: str, found: list[Candidate]) -> list[Candidate]:
    """A sample this project already has is ranked by the score its task showed, and stays a candidate after the
    labels stage dropped it or a corrected caption moved its score: the same export run again (after a re-run)
    selects the same samples, and adds nothing."""
    exported = read(labels_dir(run_dir) / "exported.parquet")
    if exported is None:
        return found
    titles = {project_title(project, m) for m in MODALITIES}
    by_key = {c.key: c for c in found}
    for row in exported.to_pylist():
        if row["project"] in titles:
            by_key[row["key"]] = Candidate(row["key"], row["modality"], row["score"], row["threshold"], row["model"],
                                           row["auto_verdict"] == "no_match")
    return list(by_key.values())


def _file_stem(title: str) -> str:
    """A project title as a file name: no path separators, no leading dot (the title is at most 50 characters)."""
    return re.sub(r"[^\w .()-]", "_", title).strip(" .") or "project"


def _record(run_dir: str, title: str, project_id: int | None, modality: str, version: str,
            rows: list[tuple[Candidate, int | None, str | None]]) -> None:
    """(candidate, task id, text shown) as rows of ``exported.parquet``."""
    if not rows:
        return
    when = datetime.now(timezone.utc).isoformat()
    merge_exported(run_dir, pa.Table.from_pylist([
        {"key": c.key, "project": title, "project_id": project_id, "task_id": task_id, "modality": modality,
         "score": c.score, "threshold": c.threshold, "model": c.model, "auto_verdict": c.auto_verdict, "text": text,
         "label_config_version": version, "exported_at": when} for c, task_id, text in rows
    ], schema=EXPORTED_SCHEMA))


def export(run_dir: str, project: str, *, select: Selection = "near-threshold", n: int | None = 100,
           seed: int = 0, fmt: str = "server", out: str | None = None, url: str | None = None,
           max_tasks: int = 1000, max_mb: float = 50.0, progress: bool = True) -> ExportResult:
    project = project_name(project)
    _check_limits(max_tasks, max_mb)
    require_run(run_dir)
    ls = client(url) if fmt != "json" else None  # no token or URL: an error before the lock is taken
    # one export of a DIR at a time, and none while a run rewrites the stages it reads
    with RunDir(run_dir).locked():
        chosen = choose(_ranked_as_shown(run_dir, project, candidates(run_dir)), select, n, seed)
        result = ExportResult(selected=len(chosen))
        if ls is None:
            _to_json(run_dir, project, chosen, Path(out) if out else labels_dir(run_dir) / "export", result)
        else:
            _to_server(ls, run_dir, project, chosen, max_tasks, max_mb, progress, result)
    return result


def _check_limits(max_tasks: int, max_mb: float) -> None:
    """Before anything is made (the CLI's parser checks them too): nan or inf MB, or none, would put every task in
    one request or fail halfway, after the project was created."""
    if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1:
        raise LabelingError(f"max_tasks must be a positive whole number, not {max_tasks!r}")
    if not math.isfinite(max_mb) or max_mb <= 0:
        raise LabelingError(f"max_mb must be a positive finite size in MB, not {max_mb!r}")


def _to_json(run_dir: str, project: str, chosen: list[Candidate], folder: Path, result: ExportResult) -> None:
    for modality in MODALITIES:
        mine = [c for c in chosen if c.modality == modality]
        tasks = _tasks(run_dir, mine)
        if not tasks:
            continue
        title, xml = project_title(project, modality), labeling_config(modality)
        stem = folder / _file_stem(title)
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(tasks).encode())
        atomic_write_bytes(stem.with_suffix(".xml"), xml.encode())
        result.files += [str(stem.with_suffix(".json")), str(stem.with_suffix(".xml"))]
        result.added[title] = len(tasks)
        # imported by hand into a project of this title: the report judges its labels by these scores
        by_key = {c.key: c for c in mine}
        _record(run_dir, title, None, modality, config_version(xml),
                [(by_key[t["data"]["key"]], None, t["data"]["text"]) for t in tasks])


def _to_server(ls: Any, run_dir: str, project: str, chosen: list[Candidate], max_tasks: int, max_mb: float,
               progress: bool, result: ExportResult) -> None:
    from tqdm import tqdm

    from mmcurate.pipeline.labeling.server import drop_duplicates, ensure_project, oldest, project_tasks

    for modality in MODALITIES:
        mine = [c for c in chosen if c.modality == modality]
        if not mine:
            continue
        title, xml = project_title(project, modality), labeling_config(modality)
        version = config_version(xml)
        remote = ensure_project(ls, title, xml)
        listing = project_tasks(ls, remote.id)
        there = oldest(listing)
        # a task already there (an earlier export of this DIR or another, one killed before it recorded) is
        # recorded too: its labels are judged like the ones added now
        _record(run_dir, title, remote.id, modality, version,
                [(c, there[c.key].id, there[c.key].text) for c in mine if c.key in there])
        new = _tasks(run_dir, [c for c in mine if c.key not in there])
        by_key = {c.key: c for c in mine}
        ours: set[int] = set()  # the ids of the tasks this export made
        bar = tqdm(total=len(new), desc=f"export to {title!r}", unit="task", file=sys.stderr, disable=not progress)
        for chunk in chunks(new, max_tasks, int(max_mb * 1e6)):
            answer = ls.projects.import_tasks(id=remote.id, request=chunk, return_task_ids=True)
            ids = list(answer.task_ids or [])
            ours.update(ids)
            # recorded per request: a kill after it loses no row (and a re-run finds these tasks there)
            _record(run_dir, title, remote.id, modality, version,
                    [(by_key[t["data"]["key"]], ids[i] if i < len(ids) else None, t["data"]["text"])
                     for i, t in enumerate(chunk)])
            bar.update(len(chunk))
        bar.close()
        # on every export, not only one that added: duplicates a killed export left go on the next. Nothing
        # imported: the listing above is still the project as this export sees it (each duplicate is fetched
        # again before it goes); else it is listed again, for another exporter's tasks
        cleaned = drop_duplicates(ls, remote.id, None if new else listing)
        if new:
            # the task kept for a key may be another exporter's: the row names it
            _record(run_dir, title, remote.id, modality, version,
                    [(c, cleaned.kept[c.key].id, cleaned.kept[c.key].text) for c in mine if c.key in cleaned.kept])
        kept = [cleaned.kept[c.key].id for c in mine if c.key in cleaned.kept]
        # what this export added is what survived: a task another exporter made first is kept instead of ours
        result.added[title] = sum(1 for task_id in kept if task_id in ours)
        result.already[title] = len(kept) - result.added[title]
        result.removed[title] = cleaned.removed
        log.info("label export: %d task(s) added to %r (project %d), %d already there, %d duplicate(s) removed",
                 result.added[title], title, remote.id, result.already[title], cleaned.removed)
