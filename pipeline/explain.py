"""``mmcurate explain DIR KEY``: one sample's history — where it came from and what each stage decided."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from mmcurate.pipeline.rundir import RunDir
from mmcurate.pipeline.storage import filesystem_threads, join, stem_of, storage_for

_SHOWN = ("source", "url", "page_url", "image_url", "audio_url", "subtitles_url", "text", "text_source",
          "caption", "alt", "title", "figcaption", "clip_start", "clip_end", "image_width", "image_height",
          "audio_seconds", "pii", "scores")


def _parquet_files(folder: Path | str) -> list[str]:
    """The parquet files directly in ``folder`` (a local directory or a remote prefix), as a dataset would."""
    store = storage_for(folder)
    return [join(folder, n) for n in store.files(str(folder))
            if n.endswith(".parquet") and "/" not in n and not n.startswith((".", "_"))]


def _dataset(files: list[str]) -> pads.Dataset:
    paths, filesystem = storage_for(files[0]).arrow(files)
    return pads.dataset(paths, format="parquet", filesystem=filesystem)


def _rows_matching(path: Path | str, keys: set[str], children_of: str | None = None) -> list[dict[str, Any]]:
    """Rows whose key is in ``keys``, plus rows derived from ``children_of``."""
    files = _parquet_files(path)
    if not files:
        return []
    dataset = _dataset(files)
    condition = pc.field("key").isin(pa.array(sorted(keys), pa.string()))
    if children_of is not None and "parent" in dataset.schema.names:
        condition = condition | (pc.field("parent") == children_of)
    columns = [c for c in dataset.schema.names if c not in ("image", "audio", "subtitles")]
    return dataset.to_table(filter=condition, columns=columns, use_threads=filesystem_threads(files[0])).to_pylist()


def committed_stages(rundir: RunDir) -> list[str]:
    """Stage names in run order: from the manifest of the last finished run, else (a run killed before its end
    writes none) from the committed stages' markers, by commit time."""
    manifest = rundir.read_json("manifest.json")
    if manifest is not None:
        return [s["name"] for s in manifest["stages"]]
    names = [n for n in rundir.store.children(rundir.url) if not n.startswith(".") and "." not in n]
    markers = [(m["finished"], name) for name in names
               if (m := rundir.marker(name)) is not None and "finished" in m]
    return [name for _, name in sorted(markers)]


def history(run_dir: str | Path, key: str) -> list[dict[str, Any]]:
    """Events for ``key``, the records it came from and the records made from it, in stage order."""
    rundir = RunDir(run_dir)
    stages = committed_stages(rundir)
    keys = {key}
    frontier = {key}
    while frontier:  # walk up the parent chain (a clip → its recording)
        parents = set()
        for stage in stages:
            for row in _rows_matching(rundir.data_dir(stage), frontier) + _rows_matching(rundir.rejects_dir(stage), frontier):
                if row.get("parent") and row["parent"] not in keys:
                    parents.add(row["parent"])
        keys |= parents
        frontier = parents
    events = []
    for stage in stages:
        decided = (rundir.marker(stage) or {}).get("decided_by") or {}
        for row in _rows_matching(rundir.data_dir(stage), keys, children_of=key):
            events.append({"stage": stage, "decision": "kept", "decided_by": decided,
                           **{k: row.get(k) for k in ("key", "parent", *_SHOWN)}})
        for row in _rows_matching(rundir.rejects_dir(stage), keys, children_of=key):
            events.append({"stage": stage, "decision": "rejected", **row})
    events[:0] = _labels_of(rundir, keys)
    written = {e["key"] for e in events}
    for shard_set, folder in rundir.shard_sets().items():
        for index in _parquet_files(folder):
            table = _dataset([index]).to_table(filter=pc.field("key").isin(pa.array(sorted(written), pa.string())),
                                               use_threads=filesystem_threads(index))
            for row in table.to_pylist():
                shard = f"{shard_set}/{stem_of(index)}" if shard_set else stem_of(index)
                events.append({"stage": "shards", "decision": "written", "shard": shard, **row})
    return events


def _labels_of(rundir: RunDir, keys: set[str]) -> list[dict[str, Any]]:
    """The human labels of ``keys`` (``DIR/labels/labels.parquet``, written by ``mmcurate label import``)."""
    if rundir.remote or not (path := Path(rundir.local_root) / "labels" / "labels.parquet").exists():
        return []
    table = pads.dataset(str(path)).to_table(filter=pc.field("key").isin(pa.array(sorted(keys), pa.string())))
    return [{"stage": "labels", "decision": "labelled", **row} for row in table.to_pylist()]


def _scores_lines(event: dict[str, Any], earlier: dict[str, float]) -> list[str]:
    """Each score the record carries; the ones this stage added with the model and threshold that made them."""
    lines = []
    for name, value in sorted(dict(event.get("scores") or []).items()):
        line = f"    score {name} = {value:.4f}"
        if name not in earlier:
            decided = event.get("decided_by") or {}
            threshold = decided.get("min_score") or {}
            modality = "audio" if name.endswith("audio_text") else "image"
            if modality in threshold:
                line += f" (threshold {threshold[modality]:g}, {'kept' if value >= threshold[modality] else 'below'})"
            if decided.get("model"):
                model = {k: v for k, v in decided["model"].items() if v is not None}
                line += f" [stage {event['stage']}, model {model}]"
        cut = (event.get("decided_by") or {}).get("summary", {}).get("cut")
        if cut is not None and fnmatch.fnmatchcase(name, event["decided_by"].get("score", "")):
            line += f" (stage {event['stage']}: top {event['decided_by']['top_fraction']:g} of the run, cut {cut:.4f})"
        lines.append(line)
    return lines


def format_history(key: str, events: list[dict[str, Any]]) -> str:
    if not events:
        return f"{key}: not found in this run directory"
    lines = []
    seen_scores: dict[str, dict[str, float]] = {}
    for e in events:
        head = f"[{e['stage']}] {e['decision']} {e.get('key')}"
        if e.get("parent"):
            head += f" (from {e['parent']})"
        if e["decision"] == "rejected":
            head += f": {e['reason']}" + (f" — {e['detail']}" if e.get("detail") else "")
        if e["decision"] == "labelled":
            verdict = {"match": "match", "no_match": "no match"}.get(e["verdict"], "no verdict")
            head = (f"[labels] {verdict} by {e['annotator']} at {e['annotated_at']} (Label Studio task "
                    f"{e['task_id']}, project {e['project']!r}, labeling config {e['label_config_version']})")
            lines.append(head + ("; flagged personal data" if e["personal_data"] else ""))
            if e.get("text"):
                lines.append(f"    corrected text: {e['text']}")
            continue
        lines.append(head)
        if e["decision"] == "rejected" and (copied := _copied(e)):
            lines.append(copied)
        if e["decision"] == "written":
            lines.append(f"    {e['shard']}.tar member {e['member']} offset {e['offset']} size {e['size']}")
            continue
        for name in _SHOWN:
            if name != "scores" and e.get(name) not in (None, "", "{}"):
                lines.append(f"    {name}: {e[name]}")
        if e["decision"] == "kept":
            lines += _scores_lines(e, seen_scores.get(e.get("key"), {}))
            seen_scores[e.get("key")] = dict(e.get("scores") or [])
    return "\n".join(lines)


def _copied(event: dict[str, Any]) -> str | None:
    """For a sample dedupe dropped: the one it copies (``duplicate of K``) or the eval item it matches."""
    from mmcurate.stages.dedupe.drops import REASONS, eval_item_of, survivor_of

    if event.get("reason") not in REASONS:
        return None
    if (key := survivor_of(event.get("detail"))) is not None:
        return f"    duplicate of {key}"
    if (item := eval_item_of(event.get("detail"))) is not None:
        return f"    copies eval item {item}"
    return None
