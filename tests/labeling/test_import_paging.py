"""The import's paging against a real Label Studio server (``label_studio``, tests/conftest.py): tasks deleted while
an import pages through the project shift no task past it (pages ask for ids above the last one read), and a
server's junk in a task or an annotation is left out with a warning, not a crash."""

from __future__ import annotations

import uuid

import pyarrow.parquet as pq
from labeling_helpers import committed_run, record

from mmcurate.pipeline.labeling import importer
from mmcurate.pipeline.labeling.export import export
from mmcurate.pipeline.labeling.importer import import_labels, tasks_by_id


def _run(server, tmp_path, n: int) -> tuple:
    run = committed_run(tmp_path / "run", [record(f"k{i:02d}", f"caption {i}", score=0.5 + 0.001 * i)
                                           for i in range(n)], low={})
    project = f"paging {uuid.uuid4().hex[:6]}"
    export(str(run), project, select="all", n=None, progress=False)
    ids = {r["key"]: r["task_id"] for r in pq.read_table(run / "labels" / "exported.parquet").to_pylist()}
    for key, task_id in ids.items():
        server.annotations.create(id=task_id, result=[{"from_name": "match", "to_name": "image", "type": "choices",
                                                       "value": {"choices": ["match"]}}])
    return run, project, ids


def _labels(run) -> set[str]:
    return {r["key"] for r in pq.read_table(run / "labels" / "labels.parquet").to_pylist()}


def test_tasks_deleted_while_an_import_pages_shift_no_task_past_it(server, tmp_path, monkeypatch):
    run, project, ids = _run(server, tmp_path, 12)
    monkeypatch.setattr(importer, "PAGE", 4)
    monkeypatch.setattr(importer, "ID_PAGE", 4)
    deleted: list[int] = []
    real_list = server.tasks.list

    def list_then_delete(**kwargs):
        page = real_list(**kwargs)
        if kwargs.get("fields") == "all" and not deleted:  # after the first page: three tasks already read go
            deleted.extend(t.id for t in page.items[:3])
            for task_id in deleted:
                server.tasks.delete(id=task_id)
        return page

    monkeypatch.setattr(importer, "client", lambda url=None: server)
    monkeypatch.setattr(server.tasks, "list", list_then_delete)
    summary = import_labels(str(run), project)
    # page numbers would have skipped three: every task not deleted has its label
    assert summary["projects"][project]["tasks_read"] == 12
    alive = {k for k, t in ids.items() if t not in deleted}
    monkeypatch.setattr(server.tasks, "list", real_list)
    import_labels(str(run), project)
    assert _labels(run) == alive and len(alive) == 9
    assert sorted(t.id for t in tasks_by_id(server, _project_id(server, project), include="id", page_size=2)) == \
        sorted(ids[k] for k in alive)


def _project_id(server, title: str) -> int:
    return next(p.id for p in server.projects.list(title=title) if p.title == title)


def test_a_time_the_server_garbled_is_no_time():
    assert importer._when("Token 0116f787") is None and importer._when(5) is None
    assert importer._when("2026-12-01T10:00:00Z").isoformat() == "2026-12-01T10:00:00+00:00"
