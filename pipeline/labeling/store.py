"""``DIR/labels/``: what the round trip keeps in the run directory (local run directories only).

  exported.parquet     one row per (project, key) selected whose task is on the server (or in a ``--format json``
                       file: no task id): task id, the score, threshold and model the task's prediction showed,
                       the filter's verdict, the text shown, the labeling config's version
  annotations.parquet  every annotation read so far, by annotation id (an edited one replaced; a task read again
                       keeps exactly the annotations the server now has for it): task id, key, annotator, time,
                       verdict, corrected text, personal-data flag, the config's version
  labels.parquet       one row per key, its latest annotation: what the ``labels`` stage applies (its bytes are
                       in that stage's fingerprint)
  state.json           per project, where the next import resumes (importer: ``since``)
  report.json          ``mmcurate label report``
Every file is written whole under a temporary name and renamed. No file holds the server's token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.labeling.select import LabelingError
from mmcurate.stages.files import atomic_write_bytes, atomic_write_parquet

ANNOTATION_SCHEMA = pa.schema([
    ("annotation_id", pa.int64()), ("task_id", pa.int64()), ("project", pa.string()), ("project_id", pa.int64()),
    ("key", pa.string()), ("verdict", pa.string()), ("text", pa.string()), ("personal_data", pa.bool_()),
    ("annotator", pa.string()), ("annotated_at", pa.string()), ("label_config_version", pa.string()),
    ("lead_time_s", pa.float64()), ("imported_at", pa.string()),
])

EXPORTED_SCHEMA = pa.schema([
    ("key", pa.string()), ("project", pa.string()), ("project_id", pa.int64()), ("task_id", pa.int64()),
    ("modality", pa.string()), ("score", pa.float64()), ("threshold", pa.float64()), ("model", pa.string()),
    ("auto_verdict", pa.string()), ("text", pa.string()), ("label_config_version", pa.string()),
    ("exported_at", pa.string()),
])


def labels_dir(run_dir: str) -> Path:
    rundir = RunDir(run_dir)
    if rundir.remote:
        raise LabelingError(f"{run_dir}: labels are kept in local run directories only")
    return Path(rundir.local_root) / "labels"


def require_directory(run_dir: str) -> Path:
    """``DIR/labels/``, where ``DIR`` is no file (reading under it would be a NotADirectoryError traceback)."""
    folder = labels_dir(run_dir)
    if folder.parent.exists() and not folder.parent.is_dir():
        raise LabelingError(f"{run_dir}: not a directory (a run directory is one)")
    return folder


def require_run(run_dir: str) -> None:
    """A run directory the workflow wrote (its ``manifest.json``): a mistyped DIR is an error before anything is
    read or written (taking the lock would create it)."""
    require_directory(run_dir)
    if RunDir(run_dir).read_json("manifest.json") is None:
        raise LabelingError(f"{run_dir}: no manifest.json (not a run directory, or the run has not finished)")


def read(path: Path) -> pa.Table | None:
    return pq.read_table(path) if path.exists() else None


def merge_exported(run_dir: str, rows: pa.Table) -> None:
    """Add exported (project, key) rows. A row already there keeps what its task first showed (score, threshold,
    model, text, time) but takes a new row's project and task id: a JSON export's row gets them when the export
    to the server finds its task, a duplicate's row the task kept for its key."""
    path = labels_dir(run_dir) / "exported.parquet"
    rows = rows.cast(EXPORTED_SCHEMA)
    old = read(path)
    merged = {(r["project"], r["key"]): r for r in (old.cast(EXPORTED_SCHEMA).to_pylist() if old is not None else [])}
    for row in rows.to_pylist():
        first = merged.setdefault((row["project"], row["key"]), row)
        if row["task_id"] is not None:
            first.update(project_id=row["project_id"], task_id=row["task_id"])
    atomic_write_parquet(pa.Table.from_pylist(list(merged.values()), schema=EXPORTED_SCHEMA), path)


def merge_annotations(run_dir: str, new: list[dict[str, Any]], reread: set[tuple[str, int]]) -> pa.Table:
    """Every annotation read so far, written back. ``reread`` holds the (project, task id) of every task this import
    read: such a task's annotations become exactly those in ``new`` (an annotation deleted in Label Studio goes, a
    task with none left has no label); tasks not read keep what earlier imports found."""
    path = labels_dir(run_dir) / "annotations.parquet"
    old = read(path).to_pylist() if path.exists() else []
    by_id = {row["annotation_id"]: row for row in old if (row["project"], row["task_id"]) not in reread}
    by_id.update({row["annotation_id"]: row for row in new})
    table = pa.Table.from_pylist(sorted(by_id.values(), key=lambda r: r["annotation_id"]), schema=ANNOTATION_SCHEMA)
    atomic_write_parquet(table, path)
    return table


def annotated_tasks(run_dir: str, project: str) -> set[int]:
    """The ids of the tasks of ``project`` (a title) that earlier imports found annotations on."""
    path = labels_dir(run_dir) / "annotations.parquet"
    if not path.exists():
        return set()
    table = read(path).select(["project", "task_id"]).to_pylist()
    return {row["task_id"] for row in table if row["project"] == project}


def write_labels(run_dir: str, annotations: pa.Table) -> pa.Table:
    """One label per key: its latest annotation (by time, then id) with a verdict; what the labels stage reads."""
    latest: dict[str, dict[str, Any]] = {}
    for row in sorted(annotations.to_pylist(), key=lambda r: (r["annotated_at"], r["annotation_id"])):
        if row["verdict"] is not None or row["text"] or row["personal_data"]:
            latest[row["key"]] = row
    # no import time: the same labels imported again are the same bytes, and re-run nothing
    table = pa.Table.from_pylist([latest[k] for k in sorted(latest)], schema=ANNOTATION_SCHEMA).drop_columns(
        ["imported_at"])
    atomic_write_parquet(table, labels_dir(run_dir) / "labels.parquet")
    return table


def read_state(run_dir: str) -> dict[str, Any]:
    path = labels_dir(run_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(run_dir: str, name: str, value: Any) -> None:
    atomic_write_bytes(labels_dir(run_dir) / name, json.dumps(value, indent=1, sort_keys=True).encode())
