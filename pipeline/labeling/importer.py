"""``mmcurate label import DIR --project NAME``: the project's annotations into ``DIR/labels/``.

Read incrementally through the SDK's paged task list, never a full export: each import asks only for the tasks
updated since where the last import left off (``state.json``; Label Studio bumps a task's ``updated_at`` when an
annotation is made, edited or deleted), a page of ``PAGE`` at a time. The tasks come whole, media included (an
``include`` list would trim the annotations to their ids). A big project's first import still pages through every
task, but no request waits on the server to build an export file (the ``exports`` endpoints build a snapshot of the
whole project first: the time-outs users meet). A task read again is idempotent: its annotations become exactly
those the server now has (a deleted one goes); a task deleted outright is found by listing the project's task ids
(ids only), and its annotations go too. Per key, the latest annotation with an answer is its label
(``labels.parquet``).

Where the next import resumes (``since``) is the earlier of the newest ``updated_at`` read and the time this import
started, less ``CLOCK_MARGIN_S``: a task read on an early page and edited while later pages were read has an
``updated_at`` after the start, and is read again next time, not lost. The margin covers a server clock behind
ours; the cost is re-reading the tasks updated in the margin before each import.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from typing import Any

from label_studio_sdk.core.api_error import ApiError

from mmcurate.pipeline.labeling.config import (MATCH_CHOICES, MATCH_FIELD, MODALITIES, PERSONAL_CHOICE,
                                               PERSONAL_FIELD, TEXT_FIELD, config_version, project_name,
                                               project_title)
from mmcurate.pipeline.labeling.select import LabelingError
from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.labeling.server import PAGE, client, find_project
from mmcurate.pipeline.labeling.store import (annotated_tasks, merge_annotations, read_state, require_run,
                                              write_json, write_labels)

log = logging.getLogger("mmcurate.label")
ID_PAGE = 5000  # task ids per page when listing which tasks still exist
CLOCK_MARGIN_S = 5.0  # how far the server's clock may run behind ours without an edit being missed


def _text(value: Any) -> str | None:
    """A TextArea's answer: Label Studio gives a list of strings; a plain string is one text (not its characters);
    an item that is not a string is ignored. Nothing usable: no corrected text."""
    parts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip()) or None


def _choices(value: dict[str, Any]) -> list[str]:
    found = value.get("choices")
    return [c for c in found if isinstance(c, str)] if isinstance(found, list) else []


def parse_result(result: list[dict[str, Any]]) -> tuple[str | None, str | None, bool]:
    """(verdict, corrected text, personal data) from one annotation's result list."""
    verdict, text, personal = None, None, False
    for item in result if isinstance(result, list) else []:
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            continue
        if item.get("from_name") == MATCH_FIELD and _choices(value):
            verdict = MATCH_CHOICES.get(_choices(value)[0].strip().lower())
        elif item.get("from_name") == TEXT_FIELD:
            text = _text(value.get("text"))
        elif item.get("from_name") == PERSONAL_FIELD:
            personal = PERSONAL_CHOICE in _choices(value)
    return verdict, text, personal


def _when(value: Any) -> datetime | None:
    """A time, aware in UTC (the SDK gives datetimes or strings, by field); None for none or one that does not
    parse (a server's junk is not ours to crash on)."""
    if value is None or value == "":
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return when.astimezone(timezone.utc)
    except (ValueError, TypeError, OverflowError):
        return None


def _iso(value: Any) -> str | None:
    """A time as ISO 8601 in UTC."""
    when = _when(value)
    return when.isoformat() if when else None


def _since_filter(since: str | None) -> list[dict[str, Any]]:
    if since is None:
        return []
    # one second of overlap: a task updated in the same instant as the last one read is read again, not missed
    start = datetime.fromisoformat(since) - timedelta(seconds=1)
    return [{"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
             "value": start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}]


def tasks_by_id(ls: Any, project_id: int, *, since: str | None = None, page_size: int | None = None,
                **fields: Any) -> Iterator[Any]:
    """The project's tasks (updated since ``since``) in ascending id, a page at a time, each page asking for ids
    above the last one read. Page numbers would shift under a deletion made while we read (every later task moves
    one page back, and one is never read: its labels lost for good, since it is not updated again)."""
    last, page_size = 0, page_size or PAGE
    while True:
        items = [*_since_filter(since), {"filter": "filter:tasks:id", "operator": "greater", "type": "Number",
                                         "value": last}]
        query = json.dumps({"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]})
        page = ls.tasks.list(project=project_id, query=query, page=1, page_size=page_size, **fields).items or []
        yield from page
        ids = [task.id for task in page if isinstance(getattr(task, "id", None), int)]
        if len(page) < page_size or not ids or max(ids) <= last:
            return
        last = max(ids)


def import_labels(run_dir: str, project: str, *, url: str | None = None) -> dict[str, Any]:
    project = project_name(project)
    require_run(run_dir)  # a mistyped DIR is an error, not a new directory holding labels
    ls = client(url)
    users: dict[int, str] = {}

    def annotator(user_id: Any) -> str:
        if not isinstance(user_id, int):
            return "unknown"
        if user_id not in users:
            try:
                user = ls.users.get(id=user_id)
                users[user_id] = user.email or user.username or f"user {user_id}"
            except ApiError as err:  # a deleted user, or a token not allowed to see others: the label still counts
                log.warning("label import: user %d not found (%s): annotations name the user id", user_id,
                            err.status_code)
                users[user_id] = f"user {user_id}"
        return users[user_id]

    # the lock before the server is read: a run must not start between our reading and our writing, and two
    # imports into one DIR would each write what they read
    with RunDir(run_dir).locked():
        state = read_state(run_dir)
        started = datetime.now(timezone.utc)
        now = started.isoformat()
        resume_by = started - timedelta(seconds=CLOCK_MARGIN_S)
        read_rows: list[dict[str, Any]] = []
        reread: set[tuple[str, int]] = set()
        summary: dict[str, Any] = {"projects": {}}
        found_any, unreadable = False, 0
        for modality in MODALITIES:
            title = project_title(project, modality)
            remote = find_project(ls, title)
            if remote is None:
                continue
            found_any = True
            version = config_version(remote.label_config or "")
            since = state.get(title, {}).get("since")
            newest, tasks_read = _when(since), 0
            # fields="all" whole: an ``include`` list also trims the annotations to their ids
            for task in tasks_by_id(ls, remote.id, since=since, fields="all"):
                tasks_read += 1
                raw = task.dict()
                updated = _when(raw.get("updated_at"))
                if updated and (newest is None or updated > newest):
                    newest = updated
                if not isinstance(raw.get("id"), int):
                    unreadable += 1
                    continue
                reread.add((title, raw["id"]))
                data = raw.get("data")
                key = data.get("key") if isinstance(data, dict) else None
                for annotation in raw.get("annotations") or []:
                    if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                        continue
                    annotated_at = _iso(annotation.get("updated_at")) or _iso(annotation.get("created_at"))
                    if not isinstance(key, str) or not isinstance(annotation.get("id"), int) or annotated_at is None:
                        unreadable += 1
                        continue
                    verdict, text, personal = parse_result(annotation.get("result"))
                    lead = annotation.get("lead_time")
                    read_rows.append({
                        "annotation_id": annotation["id"], "task_id": raw["id"], "project": title,
                        "project_id": remote.id, "key": key, "verdict": verdict, "text": text,
                        "personal_data": personal, "annotator": annotator(annotation.get("completed_by")),
                        "annotated_at": annotated_at, "label_config_version": version,
                        "lead_time_s": float(lead) if isinstance(lead, (int, float)) else None, "imported_at": now,
                    })
            # a task deleted in Label Studio is never listed as updated: the ids alone (no data, no media) say
            # which annotated tasks are gone, and their labels go with them
            present = {task.id for task in tasks_by_id(ls, remote.id, include="id", page_size=ID_PAGE)}
            gone = {task_id for task_id in annotated_tasks(run_dir, title) if task_id not in present}
            reread |= {(title, task_id) for task_id in gone}
            # a task edited while the pages were read may sit on a page read before: resume no later than we began
            resume = min(newest, resume_by) if newest is not None else None
            state[title] = {"since": resume.isoformat() if resume else None, "project_id": remote.id}
            summary["projects"][title] = {"tasks_read": tasks_read, "incremental": since is not None,
                                          "tasks_deleted": len(gone)}
        if not found_any:
            raise LabelingError(f"no project titled {project!r} (or {project_title(project, 'audio')!r}) on the server")
        annotations = merge_annotations(run_dir, read_rows, reread)
        labels = write_labels(run_dir, annotations)
        write_json(run_dir, "state.json", state)
    if unreadable:  # a task or annotation without an id, a key or a time: nothing to file it under
        log.warning("label import: %d task(s) or annotation(s) the server gave without a usable id, key or time "
                    "were left out", unreadable)
    summary.update(annotations_read=len(read_rows), annotations=annotations.num_rows, labels=labels.num_rows,
                   unreadable=unreadable)
    log.info("label import: %d annotation(s) read, %d label(s) in the run directory", len(read_rows), labels.num_rows)
    return summary
