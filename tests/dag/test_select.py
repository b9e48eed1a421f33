"""The select stage: a DuckDB expression over record columns (and modality) keeps records; every other record is
a not_selected row whose detail is the expression."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from mmcurate.schemas.record import RECORD_SCHEMA, outcome_schema
from mmcurate.schemas.stage_configs import SelectConfig
from mmcurate.stages.base import split_outcomes
from mmcurate.stages.select import SelectStage

ROWS = [
    {"key": "img", "source": "page", "image": b"\xff\xd8", "text": "a red circle on grey",
     "scores": [("clip_score.m.image_text", 0.41)]},
    {"key": "clip", "source": "page", "audio": b"fLaC", "text": "hello there", "scores": []},
    {"key": "both", "source": "url_list", "image": b"\xff\xd8", "audio": b"fLaC", "text": "a bell", "scores": None},
    {"key": "bare", "source": "warc", "text": None, "scores": [("clip_score.m.image_text", 0.12)]},
]


def batch() -> pa.Table:
    return pa.Table.from_pylist(ROWS, schema=RECORD_SCHEMA)


def decide(where: str) -> dict[str, str | None]:
    out = SelectStage(SelectConfig(where=where), "pick").process_table(batch())
    assert out["key"].to_pylist() == [r["key"] for r in ROWS] and all(out["_first"].to_pylist())
    return dict(zip(out["key"].to_pylist(), out["_reason"].to_pylist()))


@pytest.mark.parametrize(("where", "kept"), [
    ("modality = 'image'", {"img"}),
    ("modality IN ('image', 'image_audio')", {"img", "both"}),
    ("modality = 'audio'", {"clip"}),
    ("modality = 'text'", {"bare"}),
    ("length(text) >= 11", {"img", "clip"}),
    ("source <> 'page'", {"both", "bare"}),
    ("scores['clip_score.m.image_text'] > 0.3", {"img"}),
])
def test_it_keeps_exactly_the_records_the_expression_is_true_for(where, kept):
    reasons = decide(where)
    assert {k for k, r in reasons.items() if r is None} == kept
    assert {r for k, r in reasons.items() if k not in kept} <= {"not_selected"}


def test_a_null_result_is_not_selected_and_the_detail_is_the_expression():
    where = "length(text) > 3"  # null for the record without text
    out = SelectStage(SelectConfig(where=where), "pick").process_table(batch())
    kept, refused = split_outcomes(out)
    assert kept["key"].to_pylist() == ["img", "clip", "both"]
    assert refused.to_pylist()[0]["_reason"] == "not_selected"
    assert refused.to_pylist()[0]["_detail"] == f"where {where}"


def test_kept_records_leave_unchanged_with_their_extension_columns():
    table = batch().append_column(pa.field("phash", pa.uint64()), pa.array([1, 2, 3, 4], pa.uint64()))
    out = SelectStage(SelectConfig(where="phash >= 2"), "pick").process_table(table)
    assert out.schema == outcome_schema(table.schema)
    kept, _ = split_outcomes(out)
    assert kept.to_pylist() == table.slice(1).to_pylist()


@pytest.mark.parametrize("where", [
    "length(text)",  # not boolean
    "no_such_column = 1",
    "true; DROP TABLE x",  # one expression only
    "true) OR (true",
    "",
])
def test_an_expression_that_is_not_one_boolean_over_the_columns_fails_at_load(where):
    with pytest.raises(ValidationError, match="where"):
        SelectConfig(where=where)


def test_an_empty_batch_gives_no_rows():
    empty = RECORD_SCHEMA.empty_table()
    assert SelectStage(SelectConfig(where="true"), "pick").process_table(empty).num_rows == 0


@pytest.mark.parametrize(("where", "refused"), [
    ("(SELECT count(*) FROM read_text('/etc/passwd')) > 0", "a subquery"),
    ("text IN (SELECT content FROM read_text('/etc/hostname'))", "a subquery"),
    ("EXISTS (SELECT 1 FROM glob('/etc/*'))", "a subquery"),
    ("random() < 0.5", "random(), which is not deterministic"),
    ("now() > TIMESTAMP '2020-01-01'", "now(), which is not deterministic"),
    ("current_timestamp IS NOT NULL", "current_timestamp, which is not deterministic"),
    ("current_setting('threads') > 0", "current_setting(), which is not deterministic"),
    ("count(*) OVER () > 1", "the window function 'count'"),
])
def test_an_expression_that_reads_anything_but_the_record_or_is_not_reproducible_fails_at_load(where, refused):
    with pytest.raises(ValidationError, match="where") as err:
        SelectConfig(where=where)
    assert refused in str(err.value)


def test_the_stage_itself_cannot_read_a_file_whatever_the_expression_says():
    import duckdb

    unchecked = SelectConfig.model_construct(where="(SELECT count(*) FROM read_text('/etc/hostname')) > 0")
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        SelectStage(unchecked, "pick").process_batch(batch())  # process_table: an internal_error row per record


@pytest.mark.parametrize(("where", "needed"), [
    ("modality = 'audio'", set()),
    ("pii IS NOT NULL", {"pii"}),
    ("human_match OR embedding IS NULL", {"human_match", "embedding"}),
    ("phash >= 2 AND length(text) > 3", {"phash"}),
])
def test_the_config_reports_the_extension_columns_its_expression_reads(where, needed):
    assert SelectConfig(where=where).columns_needed() == needed
