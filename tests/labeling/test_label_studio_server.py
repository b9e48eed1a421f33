"""Export and import against a real Label Studio server (``label_studio``, tests/conftest.py) on a run directory
built by hand: the generated configs are accepted, a second export adds nothing, an import reads only what changed
since the last one, an edited annotation replaces the old label, an audio sample goes to its own project."""

from __future__ import annotations

import time
import uuid

import pyarrow.parquet as pq
import pytest
from labeling_helpers import committed_run, record

from mmcurate.pipeline.labeling import export as exporter, importer, server as remote
from mmcurate.pipeline.labeling.config import labeling_config
from mmcurate.pipeline.labeling.export import export
from mmcurate.pipeline.labeling.importer import CLOCK_MARGIN_S, import_labels
from mmcurate.schemas.record import empty_record


def _annotate(ls, task_id: int, verdict: str, text: str | None = None, to: str = "image") -> None:
    result = [{"from_name": "match", "to_name": to, "type": "choices", "value": {"choices": [verdict]}}]
    if text:
        result.append({"from_name": "corrected_text", "to_name": "caption" if to == "image" else "transcript",
                       "type": "textarea", "value": {"text": [text]}})
    return ls.annotations.create(id=task_id, result=result).id


def _labels(run) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(run / "labels" / "labels.parquet").to_pylist()}


def test_the_generated_configs_are_valid_label_studio_configs(server):
    for modality in ("image", "audio"):
        project = server.projects.create(title=f"config {modality} {uuid.uuid4().hex[:6]}",
                                         label_config=labeling_config(modality))
        assert project.label_config == labeling_config(modality)


def test_export_twice_then_import_incrementally(server, tmp_path):
    records = [record(f"k{i}", f"caption {i}", score=0.5 + 0.01 * i) for i in range(6)]
    flac = (__import__("pathlib").Path(__file__).parents[2] / "pipeline/demo/assets/speech/cat.flac").read_bytes()
    records.append(empty_record(key="audio1", text="a cat sat", text_source="transcript", audio=flac,
                                audio_format="flac"))
    run = committed_run(tmp_path / "run", records, low={"k9": 0.3})
    project = f"incremental {uuid.uuid4().hex[:6]}"
    first = export(str(run), project, select="all", n=None, max_tasks=2, progress=False)  # 4 requests of <= 2
    assert first.added == {project: 6, f"{project} (audio)": 1}
    again = export(str(run), project, select="all", n=None, progress=False)
    assert again.added == {project: 0, f"{project} (audio)": 0} and again.already[project] == 6
    exported = pq.read_table(run / "labels" / "exported.parquet").to_pylist()
    assert len(exported) == 7 and all(r["task_id"] for r in exported)
    ids = {r["key"]: r["task_id"] for r in exported}
    # the import after next resumes from the earlier of the newest update it saw and its own start less the clock
    # margin, with a second of overlap: annotate later than both, so the tasks left unannotated fall outside them
    # (on a fast machine all were created in the same second; a slow one only widens the gap)
    time.sleep(CLOCK_MARGIN_S + 1.5)

    _annotate(server, ids["k0"], "no match")
    _annotate(server, ids["k1"], "match", "a corrected caption")
    _annotate(server, ids["audio1"], "match", "a cat sat down", to="audio")
    got = import_labels(str(run), project)
    assert got["annotations_read"] == 3 and got["labels"] == 3
    labels = {r["key"]: r for r in pq.read_table(run / "labels" / "labels.parquet").to_pylist()}
    assert labels["k0"]["verdict"] == "no_match" and labels["k1"]["text"] == "a corrected caption"
    assert labels["audio1"]["text"] == "a cat sat down" and labels["audio1"]["project"] == f"{project} (audio)"
    assert all(r["annotator"] == server.users.whoami().email and r["label_config_version"] for r in labels.values())

    before = (run / "labels" / "labels.parquet").read_bytes()
    quiet = import_labels(str(run), project)
    assert quiet["projects"][project]["incremental"]
    # nothing changed: only tasks touched in the overlap second are read again, and the labels are the same bytes
    assert quiet["projects"][project]["tasks_read"] <= 3
    assert (run / "labels" / "labels.parquet").read_bytes() == before

    _annotate(server, ids["k0"], "match")  # a second opinion, later: the latest annotation is the label
    changed = import_labels(str(run), project)
    assert 1 <= changed["projects"][project]["tasks_read"] <= 3
    labels = {r["key"]: r for r in pq.read_table(run / "labels" / "labels.parquet").to_pylist()}
    assert labels["k0"]["verdict"] == "match" and len(labels) == 3
    assert pq.read_table(run / "labels" / "annotations.parquet").num_rows == 4


def _exported_run(server, tmp_path, n: int) -> tuple:
    run = committed_run(tmp_path / "run", [record(f"k{i}", f"caption {i}", score=0.5 + 0.01 * i) for i in range(n)],
                        low={})
    project = f"reread {uuid.uuid4().hex[:6]}"
    export(str(run), project, select="all", n=None, progress=False)
    ids = {r["key"]: r["task_id"] for r in pq.read_table(run / "labels" / "exported.parquet").to_pylist()}
    return run, project, ids


def test_an_annotation_deleted_in_label_studio_is_gone_after_the_next_import(server, tmp_path):
    run, project, ids = _exported_run(server, tmp_path, 3)
    gone = _annotate(server, ids["k0"], "no match")
    first = _annotate(server, ids["k1"], "no match")
    _annotate(server, ids["k1"], "match")  # a second opinion, later
    import_labels(str(run), project)
    assert _labels(run)["k0"]["verdict"] == "no_match" and _labels(run)["k1"]["verdict"] == "match"

    server.annotations.delete(id=gone)  # k0 has no annotation left: no label
    later = [a["id"] for a in server.tasks.get(id=ids["k1"]).annotations if a["id"] != first]
    server.annotations.delete(id=later[0])  # k1's latest goes: its first annotation is its label again
    import_labels(str(run), project)
    labels = _labels(run)
    assert "k0" not in labels and labels["k1"]["verdict"] == "no_match"
    kept = pq.read_table(run / "labels" / "annotations.parquet").to_pylist()
    assert [(r["key"], r["annotation_id"]) for r in kept] == [("k1", first)]


def test_a_task_deleted_in_label_studio_takes_its_label_with_it(server, tmp_path):
    run, project, ids = _exported_run(server, tmp_path, 3)
    _annotate(server, ids["k0"], "no match")
    _annotate(server, ids["k1"], "match")
    import_labels(str(run), project)
    assert set(_labels(run)) == {"k0", "k1"}
    server.tasks.delete(id=ids["k0"])  # the task itself, not only its annotation: never listed as updated
    summary = import_labels(str(run), project)
    assert set(_labels(run)) == {"k1"}
    assert summary["projects"][project]["tasks_deleted"] == 1
    kept = pq.read_table(run / "labels" / "annotations.parquet").to_pylist()
    assert [r["key"] for r in kept] == ["k1"]


def test_an_edit_made_while_an_import_pages_is_read_by_the_next_import(server, tmp_path, monkeypatch):
    run, project, ids = _exported_run(server, tmp_path, 4)
    annotation = {k: _annotate(server, task_id, "match") for k, task_id in ids.items()}
    no_match = [{"from_name": "match", "to_name": "image", "type": "choices", "value": {"choices": ["no match"]}}]
    real = importer.client
    read: list[str] = []
    edited: dict[str, str] = {}

    def paging_client(url=None):
        ls = real(url)
        listing = ls.tasks.list

        def list_and_edit(**kwargs):
            if kwargs.get("fields") == "all" and len(read) == 2 and not edited:
                # the first page read, the second asked for next
                edited["read"] = read[0]  # edited after it was read
                server.annotations.update(id=annotation[read[0]], result=no_match)
                # the task on a later page is edited more than the overlap second later: the newest update the
                # import sees is then past the first edit
                time.sleep(1.5)
                edited["unread"] = next(k for k in ids if k not in read)
                server.annotations.update(id=annotation[edited["unread"]], result=no_match)
            page = listing(**kwargs)
            if kwargs.get("fields") == "all":
                read.extend(task.data["key"] for task in page.items or [])
            return page
        ls.tasks.list = list_and_edit
        return ls

    monkeypatch.setattr(importer, "PAGE", 2)
    monkeypatch.setattr(importer, "client", paging_client)
    import_labels(str(run), project)
    labels = _labels(run)
    assert labels[edited["read"]]["verdict"] == "match" and labels[edited["unread"]]["verdict"] == "no_match"
    monkeypatch.setattr(importer, "client", real)
    again = import_labels(str(run), project)
    assert again["projects"][project]["incremental"]
    labels = _labels(run)
    assert sorted(k for k, r in labels.items() if r["verdict"] == "no_match") == sorted(edited.values())


def test_an_annotator_whose_user_lookup_fails_is_named_by_id_and_the_import_goes_on(server, tmp_path, monkeypatch):
    from label_studio_sdk.core.api_error import ApiError

    run, project, ids = _exported_run(server, tmp_path, 2)
    for task_id in ids.values():
        _annotate(server, task_id, "no match")
    real = importer.client

    def no_users(url=None):
        ls = real(url)

        def refused(**kwargs):
            raise ApiError(status_code=404, body={"detail": "Not found."})
        ls.users.get = refused
        return ls

    monkeypatch.setattr(importer, "client", no_users)
    got = import_labels(str(run), project)
    me = server.users.whoami().id
    assert got["labels"] == 2 and {r["annotator"] for r in _labels(run).values()} == {f"user {me}"}


def _tasks_by_key(ls, title: str) -> dict[str, list[int]]:
    project = next(p for p in ls.projects.list() if p.title == title)
    found: dict[str, list[int]] = {}
    for task in ls.tasks.list(project=project.id, include="id,data", page_size=500):
        found.setdefault(task.data["key"], []).append(task.id)
    return found


def _exported(run) -> dict[str, int]:
    return {r["key"]: r["task_id"] for r in pq.read_table(run / "labels" / "exported.parquet").to_pylist()}


def test_an_export_killed_after_a_request_recorded_it_and_its_rerun_records_every_task(server, tmp_path, monkeypatch):
    run = committed_run(tmp_path / "run", [record(f"k{i}", f"caption {i}", score=0.5 + 0.01 * i) for i in range(5)],
                        low={})
    project = f"killed {uuid.uuid4().hex[:6]}"
    real = exporter.client

    def dies_on_the_second_request(url=None):
        ls = real(url)
        send, sent = ls.projects.import_tasks, []

        def import_tasks(**kwargs):
            if sent:
                raise KeyboardInterrupt  # the user's ^C, or a kill, between two requests
            sent.append(1)
            return send(**kwargs)
        ls.projects.import_tasks = import_tasks
        return ls

    monkeypatch.setattr(exporter, "client", dies_on_the_second_request)
    with pytest.raises(KeyboardInterrupt):
        export(str(run), project, select="all", n=None, max_tasks=2, progress=False)
    on_server = _tasks_by_key(server, project)
    assert len(on_server) == 2 and _exported(run) == {k: ids[0] for k, ids in on_server.items()}
    monkeypatch.setattr(exporter, "client", real)
    again = export(str(run), project, select="all", n=None, max_tasks=2, progress=False)
    assert again.added == {project: 3} and again.already == {project: 2}
    on_server = _tasks_by_key(server, project)
    assert _exported(run) == {k: ids[0] for k, ids in on_server.items()} and len(on_server) == 5


def test_a_second_run_directory_exporting_to_the_project_records_its_tasks_and_reports(server, tmp_path):
    records = [record(f"k{i}", f"caption {i}", score=0.3 + 0.1 * i) for i in range(5)]
    first = committed_run(tmp_path / "a", records, low={})
    second = committed_run(tmp_path / "b", records, low={})
    project = f"second dir {uuid.uuid4().hex[:6]}"
    export(str(first), project, select="all", n=None, progress=False)
    got = export(str(second), project, select="all", n=None, progress=False)
    assert got.added == {project: 0} and got.already == {project: 5}
    assert _exported(second) == _exported(first)
    for key, task_id in _exported(second).items():
        _annotate(server, task_id, "no match" if key in ("k0", "k1") else "match")
    import_labels(str(second), project)
    from mmcurate.pipeline.labeling.report import report

    figures = report(str(second))["by_modality"]["image"]
    assert (figures["tp"], figures["fp"], figures["fn"], figures["tn"]) == (2, 0, 0, 3)  # k0, k1 below 0.5


def test_two_run_directories_exporting_into_one_project_at_once_leave_one_task_per_key(server, tmp_path,
                                                                                      monkeypatch):
    records = [record(f"k{i}", f"caption {i}", score=0.5 + 0.01 * i) for i in range(4)]
    first = committed_run(tmp_path / "a", records, low={})
    second = committed_run(tmp_path / "b", records, low={})
    project = f"at once {uuid.uuid4().hex[:6]}"
    export(str(first), project, select="all", n=None, progress=False)
    # the second listed the project before the first's tasks arrived: it imports every key again
    listing = remote.project_tasks
    calls: list[int] = []

    def listed_too_early(ls, project_id):
        calls.append(project_id)
        return {} if len(calls) == 1 else listing(ls, project_id)
    monkeypatch.setattr(remote, "project_tasks", listed_too_early)
    got = export(str(second), project, select="all", n=None, progress=False)
    # it imported all four, and deleted them again: none of its own was kept, so it added none
    assert got.added == {project: 0} and got.already == {project: 4} and got.removed == {project: 4}
    on_server = _tasks_by_key(server, project)
    assert all(len(ids) == 1 for ids in on_server.values()) and len(on_server) == 4
    # both name the task kept: the oldest, the first's
    assert _exported(second) == _exported(first) == {k: ids[0] for k, ids in on_server.items()}


def _draft(task_id: int) -> None:
    """A person's unsaved work: Label Studio keeps it as a draft (the SDK has no call that makes one)."""
    import os

    import httpx

    answer = httpx.post(f"{os.environ['LABEL_STUDIO_URL']}/api/tasks/{task_id}/drafts",
                        json={"result": [], "lead_time": 5},
                        headers={"Authorization": f"Token {os.environ['LABEL_STUDIO_API_KEY']}"})
    assert answer.status_code == 201, answer.text


def _duplicates(server, project: str, n: int) -> list[int]:
    pid = next(p for p in server.projects.list() if p.title == project).id
    task = {"data": {"key": "k0", "text": "caption 0", "image": "data:image/jpeg;base64,AA=="}}
    return server.projects.import_tasks(id=pid, request=[task] * n, return_task_ids=True).task_ids


def test_a_duplicate_a_person_annotated_skipped_or_began_is_kept(server, tmp_path):
    run, project, ids = _exported_run(server, tmp_path, 1)
    annotated, skipped, drafted, untouched = _duplicates(server, project, 4)
    _annotate(server, annotated, "match")
    server.annotations.create(id=skipped, result=[], was_cancelled=True)
    _draft(drafted)
    pid = next(p for p in server.projects.list() if p.title == project).id
    cleaned = remote.drop_duplicates(server, pid)
    assert cleaned.kept["k0"].id == ids["k0"] and cleaned.removed == 1
    assert sorted(_tasks_by_key(server, project)["k0"]) == [ids["k0"], annotated, skipped, drafted]


def test_a_duplicate_annotated_after_the_listing_is_fetched_again_and_kept(server, tmp_path, monkeypatch):
    run, project, ids = _exported_run(server, tmp_path, 1)
    late, draft_late = _duplicates(server, project, 2)
    pid = next(p for p in server.projects.list() if p.title == project).id
    listing = remote.project_tasks(server, pid)
    assert not any(t.touched for t in listing["k0"])
    # a person submits (and another begins) while the rest of the project is listed: the listing says untouched
    _annotate(server, late, "no match")
    _draft(draft_late)
    cleaned = remote.drop_duplicates(server, pid, listing)
    assert cleaned.removed == 0 and sorted(_tasks_by_key(server, project)["k0"]) == [ids["k0"], late, draft_late]


def test_an_export_that_adds_nothing_removes_the_duplicates_a_killed_one_left(server, tmp_path):
    run, project, ids = _exported_run(server, tmp_path, 2)
    _duplicates(server, project, 2)  # what a concurrent export killed before its cleanup leaves
    got = export(str(run), project, select="all", n=None, progress=False)
    assert got.added == {project: 0} and got.already == {project: 2} and got.removed == {project: 2}
    assert _tasks_by_key(server, project) == {k: [i] for k, i in ids.items()}


def test_a_project_name_with_spaces_is_the_stripped_title_and_one_too_long_makes_nothing(server, tmp_path):
    from mmcurate.pipeline.labeling.select import LabelingError

    run = committed_run(tmp_path / "run", [record("k0", "caption 0", score=0.5)], low={})
    project = f"spaced {uuid.uuid4().hex[:6]}"
    export(str(run), f"  {project} ", select="all", n=None, progress=False)
    again = export(str(run), f"{project}  ", select="all", n=None, progress=False)
    assert again.added == {project: 0} and [p.title for p in server.projects.list()].count(project) == 1
    long = f"long {uuid.uuid4().hex} {'x' * 10}"[:43]  # its audio title: 51 characters
    with pytest.raises(LabelingError, match="at most 50"):
        export(str(run), long, select="all", n=None, progress=False)
    assert not [p for p in server.projects.list() if p.title.startswith(long)]


def test_two_first_exports_that_both_create_the_project_keep_the_older(server, monkeypatch):
    title = f"made twice {uuid.uuid4().hex[:6]}"
    older = server.projects.create(title=title, label_config=labeling_config("image"))
    looked: list[str] = []
    real = remote.find_project

    def created_meanwhile(ls, wanted):  # the other export created it after this one looked
        looked.append(wanted)
        return None if len(looked) == 1 else real(ls, wanted)

    monkeypatch.setattr(remote, "find_project", created_meanwhile)
    got = remote.ensure_project(server, title, labeling_config("image"))
    assert got.id == older.id and [p.id for p in server.projects.list() if p.title == title] == [older.id]
