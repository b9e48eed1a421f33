"""The Label Studio server, through its SDK (label-studio-sdk 2.x): the client, projects, tasks.

The token comes from ``LABEL_STUDIO_API_KEY`` only, and the URL from ``--url`` or ``LABEL_STUDIO_URL``. Neither
the token nor a header carrying it is written anywhere: not to the run directory, not to a log (the SDK's httpx
client logs request lines, never headers, at DEBUG; our messages name the URL and project only).
"""

from __future__ import annotations

import os
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


def find_project(ls: Any, title: str) -> Any | None:
    return next((p for p in ls.projects.list(title=title) if p.title == title), None)


def ensure_project(ls: Any, title: str, label_config: str) -> Any:
    """The project titled ``title`` with ``label_config``: created, or its config updated when it changed (Label
    Studio refuses a config that drops a field existing annotations use, and says why)."""
    project = find_project(ls, title)
    if project is None:
        return ls.projects.create(title=title, label_config=label_config,
                                  description="exported by mmcurate label export")
    if (project.label_config or "").strip() != label_config.strip():
        ls.projects.update(id=project.id, label_config=label_config)
        project = ls.projects.get(id=project.id)
    return project


def task_keys(ls: Any, project_id: int) -> dict[str, int]:
    """Sample key -> task id of every task in the project, page by page."""
    found: dict[str, int] = {}
    for task in ls.tasks.list(project=project_id, include="id,data", page_size=PAGE):
        key = (task.data or {}).get("key")
        if key is not None:
            found.setdefault(key, task.id)
    return found
