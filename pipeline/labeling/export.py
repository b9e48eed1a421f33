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
from mmcurate.pipeline.labeling.select import Selection, candidates, choose, media
from mmcurate.pipeline.labeling.store import labels_dir, merge_exported
from mmcurate.pipeline.labeling.tasks import chunks, task
from mmcurate.stages.files import atomic_write_bytes

log = logging.getLogger("mmcurate.label")


@dataclass
class ExportResult:
    selected: int = 0
    added: dict[str, int] = field(default_factory=dict)  # project title -> tasks added
    already: dict[str, int] = field(default_factory=dict)  # project title -> selected tasks already there
    files: list[str] = field(default_factory=list)  # --format json


def _tasks_by_modality(run_dir: str, chosen: list) -> dict[str, list[dict]]:
    by_key = {c.key: c for c in chosen}
    out: dict[str, list[dict]] = {m: [] for m in MODALITIES}
    for record in media(run_dir, list(by_key)):
        candidate = by_key[record["key"]]
        if record.get(candidate.modality) is not None:
            out[candidate.modality].append(task(candidate, record))
    order = {c.key: i for i, c in enumerate(chosen)}
    for tasks in out.values():
        tasks.sort(key=lambda t: order[t["data"]["key"]])
    return out


def export(run_dir: str, project: str, *, select: Selection = "near-threshold", n: int | None = 100,
           seed: int = 0, fmt: str = "server", out: str | None = None, url: str | None = None,
           max_tasks: int = 1000, max_mb: float = 50.0, progress: bool = True) -> ExportResult:
    chosen = choose(candidates(run_dir), select, n, seed)
    result = ExportResult(selected=len(chosen))
    by_modality = _tasks_by_modality(run_dir, chosen)
    if fmt == "json":
        folder = Path(out) if out else labels_dir(run_dir) / "export"
        for modality, tasks in by_modality.items():
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
    for modality, tasks in by_modality.items():
        if not tasks:
            continue
        title, xml = project_title(project, modality), labeling_config(modality)
        remote = ensure_project(ls, title, xml)
        there = task_keys(ls, remote.id)
        new = [t for t in tasks if t["data"]["key"] not in there]
        result.already[title] = len(tasks) - len(new)
        exported_rows = []
        bar = tqdm(total=len(new), desc=f"export to {title!r}", unit="task", file=sys.stderr, disable=not progress)
        shown = {t["data"]["key"]: t for t in tasks}
        when = datetime.now(timezone.utc).isoformat()
        for chunk in chunks(new, max_tasks, int(max_mb * 1e6)):
            answer = ls.projects.import_tasks(id=remote.id, request=chunk, return_task_ids=True)
            there.update(zip((t["data"]["key"] for t in chunk), answer.task_ids or []))
            bar.update(len(chunk))
        bar.close()
        by_key = {c.key: c for c in chosen}
        for key in shown:
            c = by_key[key]
            exported_rows.append({"key": key, "project": title, "project_id": remote.id, "task_id": there.get(key),
                                  "modality": modality, "score": c.score, "threshold": c.threshold, "model": c.model,
                                  "auto_verdict": c.auto_verdict, "text": shown[key]["data"]["text"],
                                  "label_config_version": config_version(xml), "exported_at": when})
        merge_exported(run_dir, pa.Table.from_pylist(exported_rows))
        result.added[title] = len(new)
        log.info("label export: %d task(s) added to %r (project %d), %d already there", len(new), title, remote.id,
                 result.already[title])
    return result
