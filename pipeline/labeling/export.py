"""``mmcurate label export DIR --project NAME``: the chosen samples as Label Studio tasks, with predictions.

Idempotent by sample key: the project's tasks are listed first (``task_keys``) and a key already there is not
imported again, so re-running an export (or one interrupted halfway) adds only what is missing. Tasks go in
requests of at most ``max_tasks`` tasks and ``max_mb`` MB (Label Studio refuses imports past 250K tasks or 200 MB
per request); a progress bar counts them. What was exported is recorded in ``DIR/labels/exported.parquet`` (key,
project, task id, the score, threshold and model shown): the report judges the filter by these scores.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from mmcurate.pipeline.labeling.config import MODALITIES, config_version, labeling_config, project_title
from mmcurate.pipeline.labeling.select import Candidate, Selection, candidates, choose, media
from mmcurate.pipeline.labeling.store import EXPORTED_SCHEMA, labels_dir, merge_exported, read
from mmcurate.pipeline.labeling.tasks import chunks, task
from mmcurate.stages.files import atomic_write_bytes

log = logging.getLogger("mmcurate.label")


@dataclass
class ExportResult:
    selected: int = 0
    added: dict[str, int] = field(default_factory=dict)  # project title -> tasks added
    already: dict[str, int] = field(default_factory=dict)  # project title -> selected tasks already there
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


def export(run_dir: str, project: str, *, select: Selection = "near-threshold", n: int | None = 100,
           seed: int = 0, fmt: str = "server", out: str | None = None, url: str | None = None,
           max_tasks: int = 1000, max_mb: float = 50.0, progress: bool = True) -> ExportResult:
    chosen = choose(_ranked_as_shown(run_dir, project, candidates(run_dir)), select, n, seed)
    result = ExportResult(selected=len(chosen))
    if fmt == "json":
        folder = Path(out) if out else labels_dir(run_dir) / "export"
        for modality in MODALITIES:
            tasks = _tasks(run_dir, [c for c in chosen if c.modality == modality])
            if tasks:
                stem = folder / project_title(project, modality).replace("/", "_")
                atomic_write_bytes(stem.with_suffix(".json"), json.dumps(tasks).encode())
                atomic_write_bytes(stem.with_suffix(".xml"), labeling_config(modality).encode())
                result.files += [str(stem.with_suffix(".json")), str(stem.with_suffix(".xml"))]
                result.added[project_title(project, modality)] = len(tasks)
        return result

    from tqdm import tqdm

    from mmcurate.pipeline.labeling.server import client, ensure_project, task_keys

    ls = client(url)
    for modality in MODALITIES:
        mine = [c for c in chosen if c.modality == modality]
        if not mine:
            continue
        title, xml = project_title(project, modality), labeling_config(modality)
        remote = ensure_project(ls, title, xml)
        there = task_keys(ls, remote.id)
        new = _tasks(run_dir, [c for c in mine if c.key not in there])
        by_key = {c.key: c for c in mine}
        result.already[title] = sum(1 for c in mine if c.key in there)
        bar = tqdm(total=len(new), desc=f"export to {title!r}", unit="task", file=sys.stderr, disable=not progress)
        for chunk in chunks(new, max_tasks, int(max_mb * 1e6)):
            answer = ls.projects.import_tasks(id=remote.id, request=chunk, return_task_ids=True)
            there.update(zip((t["data"]["key"] for t in chunk), answer.task_ids or []))
            bar.update(len(chunk))
        bar.close()
        when = datetime.now(timezone.utc).isoformat()
        merge_exported(run_dir, pa.Table.from_pylist([
            {"key": t["data"]["key"], "project": title, "project_id": remote.id, "task_id": there.get(t["data"]["key"]),
             "modality": modality, "score": c.score, "threshold": c.threshold, "model": c.model,
             "auto_verdict": c.auto_verdict, "text": t["data"]["text"], "label_config_version": config_version(xml),
             "exported_at": when} for t, c in ((t, by_key[t["data"]["key"]]) for t in new)
        ], schema=EXPORTED_SCHEMA))
        result.added[title] = len(new)
        log.info("label export: %d task(s) added to %r (project %d), %d already there", len(new), title, remote.id,
                 result.already[title])
    return result
