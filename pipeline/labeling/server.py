"""The Label Studio server, through its SDK (label-studio-sdk 2.x): the client, projects, tasks.

The token comes from ``LABEL_STUDIO_API_KEY`` only, and the URL from ``--url`` or ``LABEL_STUDIO_URL``. Neither
the token nor a header carrying it is written anywhere: not to the run directory, not to a log (the SDK's httpx
client logs request lines, never headers, at DEBUG; our messages name the URL and project only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mmcurate.pipeline.labeling.select import LabelingError

TOKEN_VARIABLE, URL_VARIABLE = "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL"
PAGE = 500  # tasks per page when listing a project


def client(url: str | None = None) -> Any:
    from label_studio_sdk import LabelStudio

    url = url or os.environ.get(URL_VARIABLE)
    token = os.environ.get(TOKEN_VARIABLE)
    if not url:
        raise LabelingError(f"no Label Studio URL: pass --url or set {URL_VARIABLE}")
    if not token:
        raise LabelingError(f"no Label Studio token: set {TOKEN_VARIABLE} (it is read from the environment only)")
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=120)


@dataclass(frozen=True)
class Listed:
    """One task of a project as the export sees it."""
    id: int
    text: str | None  # the text it shows
    touched: bool  # a person has answered, skipped or begun (a draft) it: never deleted


def _touched(task: Any, unknown: bool) -> bool:
    """A person's work is on ``task``: an annotation, a skip (a cancelled annotation) or a draft (any user's:
    ``draft_exists``; the task's ``drafts`` are only the token's user's). Predictions are ours, and do not count.
    ``unknown``: what a server that does not say whether a draft exists counts as."""
    drafted = getattr(task, "draft_exists", None)
    return bool(getattr(task, "total_annotations", 0) or getattr(task, "cancelled_annotations", 0)
                or getattr(task, "annotations", None) or (unknown if drafted is None else drafted))


def find_project(ls: Any, title: str) -> Any | None:
    """The project titled ``title``; of two (made by two first exports at once), the older, as every exporter
    picks."""
    return min((p for p in ls.projects.list(title=title) if p.title == title), key=lambda p: p.id, default=None)


def ensure_project(ls: Any, title: str, label_config: str) -> Any:
    """The project titled ``title`` with ``label_config``: created, or its config updated when it changed (Label
    Studio refuses a config that drops a field existing annotations use, and says why). Two exports creating it at
    once each make one: the newer, still empty, is deleted and the older used."""
    project = find_project(ls, title)
    if project is None:
        made = ls.projects.create(title=title, label_config=label_config,
                                  description="exported by mmcurate label export")
        project = find_project(ls, title)
        if project is not None and project.id != made.id:
            _delete(ls.projects.delete, made.id)
        return project or made
    if (project.label_config or "").strip() != label_config.strip():
        ls.projects.update(id=project.id, label_config=label_config)
        project = ls.projects.get(id=project.id)
    return project


def project_tasks(ls: Any, project_id: int) -> dict[str, list[Listed]]:
    """Sample key -> the project's tasks with that key, oldest (lowest id) first, page by page. The listing holds
    each task's ``data`` whole, media included: the server has no way to list one field of it."""
    found: dict[str, list[Listed]] = {}
    for task in ls.tasks.list(project=project_id, page_size=PAGE,
                              include="id,data,total_annotations,cancelled_annotations,draft_exists"):
        data = task.data or {}
        key = data.get("key")
        if key is not None:
            found.setdefault(key, []).append(Listed(int(task.id), data.get("text"), _touched(task, unknown=False)))
    for tasks in found.values():
        tasks.sort(key=lambda t: t.id)
    return found


def oldest(listing: dict[str, list[Listed]]) -> dict[str, Listed]:
    """Sample key -> its oldest task: the one every exporter keeps."""
    return {key: tasks[0] for key, tasks in listing.items()}


@dataclass(frozen=True)
class Cleaned:
    kept: dict[str, Listed]  # sample key -> the task kept for it (its oldest)
    removed: int  # duplicates this exporter deleted


def drop_duplicates(ls: Any, project_id: int, listing: dict[str, list[Listed]] | None = None) -> Cleaned:
    """Two exports at once (of two run directories into one project) each import a key the other had not yet, and a
    killed one leaves its duplicates behind: a key's tasks past its oldest are deleted unless a person has touched
    them. ``listing``: the project as listed after this export's last import (listed now when not given). Every
    exporter keeps the same one (ids only grow), and whichever lists last sees every duplicate.

    The listing may be minutes old by the time a duplicate's turn comes (a project's tasks hold their media), so
    each is fetched again just before it is deleted, and kept if a person has touched it since. A window of one
    request remains: an annotation submitted between that fetch and the delete goes with its task."""
    listing = project_tasks(ls, project_id) if listing is None else listing
    removed = 0
    for tasks in listing.values():
        for extra in tasks[1:]:
            if not extra.touched and _untouched_now(ls, extra.id):
                removed += _delete(ls.tasks.delete, str(extra.id))
    return Cleaned(oldest(listing), removed)


def _untouched_now(ls: Any, task_id: int) -> bool:
    """Nobody's work is on the task as the server has it now (gone: nothing to delete; a server that does not say
    whether a draft exists: kept)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        task = ls.tasks.get(id=str(task_id))
    except ApiError as err:
        if err.status_code == 404:  # the other exporter deleted it first
            return False
        raise
    return not _touched(task, unknown=True)


def _delete(delete: Any, id: Any) -> bool:
    """Whether this call deleted it (False: it was gone already)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        delete(id=id)
    except ApiError as err:
        if err.status_code != 404:  # 404: the other exporter deleted it first
            raise
        return False
    return True
