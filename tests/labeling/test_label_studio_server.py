"""Export and import against a real Label Studio server (``label_studio``, tests/conftest.py) on a run directory
built by hand: the generated configs are accepted, a second export adds nothing, an import reads only what changed
since the last one, an edited annotation replaces the old label, an audio sample goes to its own project."""

from __future__ import annotations

import time
import uuid

import pyarrow.parquet as pq
import pytest
from labeling_helpers import committed_run, record

from mmcurate.pipeline.labeling.config import labeling_config
from mmcurate.pipeline.labeling.export import export
from mmcurate.pipeline.labeling.importer import import_labels
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
    ls.annotations.create(id=task_id, result=result)


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
    # the import after next re-reads tasks updated within a second of the newest it saw: annotate later than that,
    # so the tasks left unannotated fall outside the overlap (on a fast machine all were created in the same second)
    time.sleep(1.5)

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
