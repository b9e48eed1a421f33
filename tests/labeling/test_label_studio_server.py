"""Export and import against a real Label Studio server (``label_studio``, tests/conftest.py) on a run directory
built by hand: the generated configs are accepted, a second export adds nothing, an import reads only what changed
since the last one, an edited annotation replaces the old label, an audio sample goes to its own project."""

from __future__ import annotations

import time
import uuid

import pyarrow.parquet as pq
import pytest
from labeling_helpers import committed_run, record

from mmcurate.pipeline.labeling import importer
from mmcurate.pipeline.labeling.config import labeling_config
from mmcurate.pipeline.labeling.export import export
from mmcurate.pipeline.labeling.importer import CLOCK_MARGIN_S, import_labels
from mmcurate.schemas.record import empty_record


@pytest.fixture
def server(label_studio, monkeypatch):
    from label_studio_sdk import LabelStudio

    url, token = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    return LabelStudio(base_url=url, api_key=token)


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
            for task in listing(**kwargs):
                read.append(task.data["key"])
                yield task
                if len(read) == 2:  # the first page read, the second not yet asked for
                    edited["read"] = read[0]  # edited after it was read
                    server.annotations.update(id=annotation[read[0]], result=no_match)
                    # the task on a later page is edited more than the overlap second later: the newest update the
                    # import sees is then past the first edit
                    time.sleep(1.5)
                    edited["unread"] = next(k for k in ids if k not in read)
                    server.annotations.update(id=annotation[edited["unread"]], result=no_match)
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
