"""The labels stage on Arrow batches (no Ray): what each label does to a record, and the score stages' override."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from labeling_helpers import labels_table, record

from mmcurate.pipeline.fingerprint import FileDigests, stage_fingerprint
from mmcurate.schemas.record import RECORD_SCHEMA
from mmcurate.schemas.stage_configs import LabelsConfig, ScoreFilterConfig
from mmcurate.stages.labels import LabelsStage
from mmcurate.stages.score_filter import ScoreFilterStage


def _batch(records) -> pa.Table:
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def _stage(path) -> LabelsStage:
    stage = LabelsStage(LabelsConfig(labels=str(path)))
    stage.setup()
    return stage


def test_each_label_drops_keeps_or_corrects_its_record(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(labels_table([
        {"key": "a", "verdict": "no_match"},
        {"key": "b", "verdict": "match"},
        {"key": "c", "verdict": "match", "text": "a blue square on grey"},
        {"key": "d", "verdict": "match", "personal_data": True},
    ]), path)
    out = _stage(path).process_table(_batch([record(k, f"caption {k}") for k in "abcde"])).to_pylist()
    by_key = {row["key"]: row for row in out}
    assert by_key["a"]["_reason"] == "label_rejected"
    assert "ann@example.com" in by_key["a"]["_detail"] and "task 100" in by_key["a"]["_detail"]
    assert by_key["a"]["image"] is None  # a reject row explains, it does not carry media
    assert by_key["d"]["_reason"] == "label_personal_data"
    assert [by_key[k]["_reason"] for k in "bce"] == [None, None, None]
    assert [by_key[k]["human_match"] for k in "bce"] == [True, True, None]
    assert by_key["c"]["text"] == "a blue square on grey" and by_key["c"]["text_source"] == "label"
    assert by_key["b"]["text"] == "caption b" and by_key["b"]["text_source"] == "caption"
    assert all(row["_first"] for row in out) and len(out) == 5  # in = kept + rejected


def test_without_a_labels_table_every_record_passes_unchanged(tmp_path):
    batch = _batch([record(k, f"caption {k}") for k in "ab"])
    out = _stage(tmp_path / "absent.parquet").process_table(batch)
    assert out["_reason"].null_count == 2 and out["human_match"].null_count == 2
    assert out["text"].to_pylist() == batch["text"].to_pylist()


def test_an_unreadable_labels_table_is_an_input_error_not_a_traceback(tmp_path):
    import pytest

    from mmcurate.stages.base import InputError

    (tmp_path / "labels.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot be read"):
        _stage(tmp_path / "labels.parquet")


def test_score_filter_keeps_a_human_match_below_its_cut_and_drops_the_rest():
    batch = _batch([record("a", "x", score=0.2), record("b", "x", score=0.2), record("c", "x", score=0.9)])
    batch = batch.append_column("human_match", pa.array([True, None, None], pa.bool_()))
    stage = ScoreFilterStage(ScoreFilterConfig(score="clip_score.*.image_text", top_fraction=0.5))
    out = stage.decide(batch, {"scored": 3, "keep": 2, "cut": 0.5}).to_pylist()
    assert [row["_reason"] for row in out] == [None, "score_below_cut", None]


def test_the_labels_bytes_enter_the_fingerprint_though_they_live_in_the_run_dir(tmp_path):
    labels = tmp_path / "labels" / "labels.parquet"
    labels.parent.mkdir()
    config = LabelsConfig(labels=str(labels))

    def fingerprint() -> str:
        return stage_fingerprint(kind="labels", config=config, upstream=["u"], files=FileDigests(tmp_path / "c.json"),
                                 serve=None, run_root=str(tmp_path))[0]

    none = fingerprint()
    pq.write_table(labels_table([{"key": "a", "verdict": "match"}]), labels)
    some = fingerprint()
    pq.write_table(labels_table([{"key": "a", "verdict": "no_match"}]), labels)
    assert len({none, some, fingerprint()}) == 3


def test_a_stage_named_labels_is_refused_its_link_would_be_the_imported_labels(tmp_path):
    import pytest

    from mmcurate.schemas.workflow import WorkflowError, load_workflow

    path = tmp_path / "w.yaml"
    path.write_text("name: w\nstages:\n  - {stage: crawl, seeds: ['http://127.0.0.1:1/']}\n  - stage: align\n"
                    "  - {stage: labels, labels: /tmp/l.parquet}\n  - stage: shard\n")
    with pytest.raises(WorkflowError, match="labels"):
        load_workflow(path)
