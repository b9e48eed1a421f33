"""Records, label tables and a small committed run directory built by hand (imported as ``labeling_helpers``:
pytest puts this folder on sys.path)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmcurate.pipeline.labeling.store import ANNOTATION_SCHEMA
from mmcurate.schemas.record import REJECT_SCHEMA, RECORD_SCHEMA, empty_record


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, "JPEG")
    return out.getvalue()


def record(key: str, text: str, score: float | None = None, model: str = "m-1", **values) -> dict:
    scores = [(f"clip_score.{model}.image_text", score)] if score is not None else None
    return empty_record(key=key, text=text, text_source="caption", caption=text, image=jpeg((200, 30, 30)),
                        image_format="jpg", image_width=32, image_height=24, scores=scores, **values)


def labels_table(rows: list[dict]) -> pa.Table:
    full = [{"annotation_id": i + 1, "task_id": 100 + i, "project": "p", "project_id": 1, "verdict": None,
             "text": None, "personal_data": False, "annotator": "ann@example.com",
             "annotated_at": f"2026-12-01T10:00:0{i}Z", "label_config_version": "v1", "lead_time_s": 3.0,
             "imported_at": "2026-12-01T11:00:00Z", **row} for i, row in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=ANNOTATION_SCHEMA).drop_columns(["imported_at"])


def committed_run(root: Path, records: list[dict], low: dict[str, float], threshold: float = 0.5,
                  model: str = "m-1") -> Path:
    """A run directory as the runner leaves it, for what export reads: ``apply_labels`` (the records clip_score
    read, media included) then ``clip_score`` (the kept rows with their scores, ``low`` as clip_score_low rejects
    with the detail clip_score writes) and its marker with min_score."""
    (root / "apply_labels" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), root / "apply_labels" / "data" / "part-0.parquet")
    (root / "clip_score" / "data").mkdir(parents=True)
    kept = [r for r in records if r["key"] not in low]
    pq.write_table(pa.Table.from_pylist(kept, schema=RECORD_SCHEMA), root / "clip_score" / "data" / "part-0.parquet")
    (root / "rejects" / "clip_score").mkdir(parents=True)
    rejects = [{"key": k, "parent": None, "url": None, "page_url": None, "stage": "clip_score",
                "reason": "clip_score_low", "detail": f"image_text {s:.4f} < {threshold:g} (model {model})",
                "config_hash": "c"} for k, s in low.items()]
    pq.write_table(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), root / "rejects" / "clip_score" / "part-0.parquet")
    (root / "clip_score" / "_SUCCESS.json").write_text(json.dumps(
        {"decided_by": {"min_score": {"image": threshold}, "model": {"checkpoint": "x"}}}))
    (root / "manifest.json").write_text(json.dumps({"stages": [{"name": "apply_labels", "kind": "labels"},
                                                              {"name": "clip_score", "kind": "clip_score"}]}))
    return root
