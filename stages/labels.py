"""The ``labels`` stage: what people decided in Label Studio (``mmcurate label import``) applied to the run.

Per record whose key has a label (the table holds one row per key, the latest annotation):
  * "no match": ``label_rejected``, the detail naming annotator, time and task;
  * "contains personal data" (with ``drop_personal_data``): ``label_personal_data``;
  * "match": kept with ``human_match`` true, which the score stages after it (``clip_score``, ``score_filter``)
    honour: they score it as usual but do not drop it, so ``explain`` shows the score that would have;
  * a corrected caption or transcript replaces ``text`` (``text_source``: ``label``), so the stages after it
    (clip_score, the PII stage) see the person's text.
A record without a label passes unchanged (``human_match`` null). The stage sits before the score stages and
after any model training, so new labels re-run scoring onwards but never retrain the filter.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import LabelsConfig
from mmcurate.stages.base import BatchStage, Decisions, InputError

# what `mmcurate label import` writes (mmcurate.pipeline.labeling.store) and this stage reads
LABEL_COLUMNS = ("key", "verdict", "text", "personal_data", "annotator", "annotated_at", "task_id")
MATCH, NO_MATCH = "match", "no_match"


def read_labels(path: str) -> dict[str, dict[str, Any]]:
    """Key -> label row of a labels table; an absent table is no labels."""
    if not os.path.exists(path):
        return {}
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"labels table {path} cannot be read: {err}") from None
    missing = set(LABEL_COLUMNS) - set(table.column_names)
    if missing:
        raise InputError(f"labels table {path} lacks column(s) {sorted(missing)}")
    return {row["key"]: row for row in table.select(list(LABEL_COLUMNS)).to_pylist()}


def who(label: dict[str, Any]) -> str:
    return f"{label['annotator']} at {label['annotated_at']} (Label Studio task {label['task_id']})"


class LabelsStage(BatchStage[LabelsConfig]):
    labels: dict[str, dict[str, Any]] | None = None

    def setup(self) -> None:
        if self.labels is None:
            self.labels = read_labels(self.config.labels)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.labels is None:
            raise RuntimeError("LabelsStage.process_batch before setup(): setup reads the labels")
        found = [self.labels.get(key) for key in batch["key"].to_pylist()]
        decisions = Decisions(batch)
        said = [who(label) if label is not None else None for label in found]
        decisions.reject([label is not None and label["verdict"] == NO_MATCH for label in found],
                         Reason.LABEL_REJECTED, [f"labelled no match by {w}" if w else None for w in said])
        if self.config.drop_personal_data:
            decisions.reject([label is not None and bool(label["personal_data"]) for label in found],
                             Reason.LABEL_PERSONAL_DATA, [f"flagged personal data by {w}" if w else None for w in said])
        decisions.set("human_match", [None if label is None or label["verdict"] not in (MATCH, NO_MATCH)
                                      else label["verdict"] == MATCH for label in found], pa.bool_())
        corrected = [label["text"].strip() if label is not None and (label["text"] or "").strip() else None
                     for label in found]
        if any(corrected):
            decisions.set("text", [c if c else t for c, t in zip(corrected, batch["text"].to_pylist())])
            decisions.set("text_source", ["label" if c else s for c, s in zip(corrected, batch["text_source"].to_pylist())])
        return decisions.outcomes()


__all__ = ["LabelsStage", "read_labels"]
