"""``mmcurate label import DIR --project NAME``: the project's annotations into ``DIR/labels/``.

Read incrementally through the SDK's paged task list, never a full export: each import asks only for the tasks
updated since the newest update the last import saw (``state.json``; Label Studio bumps a task's ``updated_at``
when an annotation is made or edited), a page of ``PAGE`` at a time, media left out. A big project's first import
still pages through every annotated task, but no request waits on the server to build an export file (the
``exports`` endpoints build a snapshot of the whole project first: the time-outs users meet). Annotations are kept by
id, so reading one again (the overlap second below) replaces it. Per key, the latest annotation with an answer is
its label (``labels.parquet``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from mmcurate.pipeline.labeling.config import (MATCH_CHOICES, MATCH_FIELD, MODALITIES, PERSONAL_CHOICE,
                                               PERSONAL_FIELD, TEXT_FIELD, config_version, project_title)
from mmcurate.pipeline.labeling.select import LabelingError
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.labeling.server import PAGE, client, find_project
from mmcurate.pipeline.labeling.store import merge_annotations, read_state, write_json, write_labels

log = logging.getLogger("mmcurate.label")


def parse_result(result: list[dict[str, Any]]) -> tuple[str | None, str | None, bool]:
    """(verdict, corrected text, personal data) from one annotation's result list."""
    verdict, text, personal = None, None, False
    for item in result or []:
        value = item.get("value") or {}
        if item.get("from_name") == MATCH_FIELD and value.get("choices"):
            verdict = MATCH_CHOICES.get(value["choices"][0].strip().lower())
        elif item.get("from_name") == TEXT_FIELD and value.get("text"):
            joined = " ".join(t.strip() for t in value["text"] if t and t.strip())
            text = joined or None
        elif item.get("from_name") == PERSONAL_FIELD:
            personal = PERSONAL_CHOICE in (value.get("choices") or [])
    return verdict, text, personal


def _iso(value: Any) -> str | None:
    """A time as ISO 8601 in UTC (the SDK gives datetimes or strings, by field)."""
    if value is None or value == "":
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when.astimezone(timezone.utc).isoformat()


def _since_filter(since: str | None) -> str | None:
    if since is None:
        return None
    # one second of overlap: a task updated in the same instant as the last one read is read again, not missed
    start = datetime.fromisoformat(since) - timedelta(seconds=1)
    return json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
         "value": start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}]}})


def import_labels(run_dir: str, project: str, *, url: str | None = None) -> dict[str, Any]:
    ls = client(url)
    state = read_state(run_dir)
    users: dict[int, str] = {}

    def annotator(user_id: int | None) -> str:
        if user_id is None:
            return "unknown"
        if user_id not in users:
            user = ls.users.get(id=user_id)
            users[user_id] = user.email or user.username or f"user {user_id}"
        return users[user_id]

    now = datetime.now(timezone.utc).isoformat()
    read_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"projects": {}}
    found_any = False
    for modality in MODALITIES:
        title = project_title(project, modality)
        remote = find_project(ls, title)
        if remote is None:
            continue
        found_any = True
        version = config_version(remote.label_config or "")
        since = state.get(title, {}).get("since")
        newest, tasks_read = since, 0
        # fields="all" whole: an ``include`` list also trims the annotations to their ids
        for task in ls.tasks.list(project=remote.id, fields="all", query=_since_filter(since), page_size=PAGE):
            tasks_read += 1
            raw = task.dict()
            updated = _iso(raw.get("updated_at"))
            if updated and (newest is None or updated > newest):
                newest = updated
            key = (raw.get("data") or {}).get("key")
            for annotation in raw.get("annotations") or []:
                if key is None or annotation.get("was_cancelled"):
                    continue
                verdict, text, personal = parse_result(annotation.get("result"))
                read_rows.append({
                    "annotation_id": annotation["id"], "task_id": raw["id"], "project": title, "project_id": remote.id,
                    "key": key, "verdict": verdict, "text": text, "personal_data": personal,
                    "annotator": annotator(annotation.get("completed_by")),
                    "annotated_at": _iso(annotation.get("updated_at") or annotation.get("created_at")),
                    "label_config_version": version, "lead_time_s": annotation.get("lead_time"), "imported_at": now,
                })
        state[title] = {"since": newest, "project_id": remote.id}
        summary["projects"][title] = {"tasks_read": tasks_read, "incremental": since is not None}
    if not found_any:
        raise LabelingError(f"no project titled {project!r} (or {project_title(project, 'audio')!r}) on the server")
    # a run reading the labels table while it changed would commit a stage whose fingerprint names other bytes
    with RunDir(run_dir).locked():
        annotations = merge_annotations(run_dir, read_rows)
        labels = write_labels(run_dir, annotations)
        write_json(run_dir, "state.json", state)
    summary.update(annotations_read=len(read_rows), annotations=annotations.num_rows, labels=labels.num_rows)
    log.info("label import: %d annotation(s) read, %d label(s) in the run directory", len(read_rows), labels.num_rows)
    return summary
