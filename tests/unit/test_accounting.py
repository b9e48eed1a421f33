"""The runner measures what entered a stage and refuses a stage that loses a record; unexpected per-record
exceptions become internal_error rows, up to a limit."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.pipeline.runner import StageFailed, check_accounting, check_error_fraction, tally_outcomes
from mmcurate.schemas.record import RECORD_SCHEMA, REJECT_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import AlignConfig
from mmcurate.stages.base import RecordStage, kept


def records(n: int) -> pa.Table:
    return pa.Table.from_pylist([empty_record(key=f"k{i}", text=f"t{i}") for i in range(n)], schema=RECORD_SCHEMA)


class FanOut(RecordStage[AlignConfig]):
    kind = "align"

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return [kept(record, key=record["key"] + suffix) for suffix in ("a", "b", "c")]


class DropsEveryOther(RecordStage[AlignConfig]):
    """Deliberately broken: overrides the batch loop and loses half its input without an outcome row."""

    kind = "align"

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return [kept(record)]

    def process_table(self, table: pa.Table) -> pa.Table:
        return super().process_table(table.take(list(range(0, table.num_rows, 2))))


class RaisesOnOdd(RecordStage[AlignConfig]):
    kind = "align"

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        if int(record["key"][1:]) % 2:
            raise ValueError(f"cannot handle {record['key']}")
        return [kept(record)]


def test_a_fan_out_stage_counts_records_in_and_rows_out():
    stats = tally_outcomes([FanOut(AlignConfig()).process_table(records(4))], is_source=False)
    assert (stats["in"], stats["out"], stats["kept"]) == (4, 12, 12)
    check_accounting("align", stats, upstream_rows=4)


def test_a_stage_that_drops_a_record_without_an_outcome_fails_named():
    stats = tally_outcomes([DropsEveryOther(AlignConfig()).process_table(records(6))], is_source=False)
    assert stats["in"] == 3
    with pytest.raises(StageFailed, match=r"stage align: 6 records came from upstream but 3 entered.*3 lost"):
        check_accounting("align", stats, upstream_rows=6)


def test_an_unexpected_exception_becomes_an_internal_error_row_and_the_batch_goes_on():
    table = RaisesOnOdd(AlignConfig()).process_table(records(4)).to_pylist()
    assert [r["_reason"] for r in table] == [None, "internal_error", None, "internal_error"]
    detail = table[1]["_detail"]
    assert detail.startswith("ValueError: cannot handle k1") and "[trace " in detail and "process" in detail
    # the same bug gives the same trace digest on every record
    assert detail.split("[trace ")[1] == table[3]["_detail"].split("[trace ")[1]


def _rejects(tmp_path, n_errors: int):
    rows = [{"key": f"k{i}", "parent": None, "url": None, "page_url": None, "stage": "align",
             "reason": "internal_error", "detail": f"ValueError: boom {i}", "config_hash": "h"} for i in range(n_errors)]
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), tmp_path / "part-0.parquet")
    return tmp_path


def test_errors_within_max_error_fraction_pass_and_past_it_fail_with_the_first_errors(tmp_path):
    within = {"in": 200, "out": 200, "kept": 198, "rejected": {"internal_error": 2}}
    check_error_fraction("align", within, 0.01, _rejects(tmp_path, 2))
    past = {"in": 100, "out": 100, "kept": 97, "rejected": {"internal_error": 3}}
    with pytest.raises(StageFailed, match=r"(?s)stage align: 3 of 100 records raised.*k0: ValueError: boom 0"):
        check_error_fraction("align", past, 0.01, _rejects(tmp_path, 3))


def test_a_page_that_breaks_the_fetcher_unexpectedly_is_a_page_row_with_internal_error():
    from mmcurate.schemas.stage_configs import CrawlConfig
    from mmcurate.stages.crawl.pages import PageFetcher

    fetcher = PageFetcher(CrawlConfig(seeds=("http://127.0.0.1:1/",)))

    def broken(url, accept=()):
        raise ZeroDivisionError("bug")

    fetcher.fetcher.fetch = broken
    rows = fetcher(pa.table({"url": ["http://127.0.0.1:1/a.html", "http://127.0.0.1:1/b.html"], "depth": [1, 1]}))
    assert rows["reason"].to_pylist() == ["internal_error", "internal_error"]
    assert rows["detail"][0].as_py().startswith("ZeroDivisionError: bug")
