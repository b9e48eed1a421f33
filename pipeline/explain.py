"""``mmcurate explain DIR KEY``: one sample's history — where it came from and what each stage decided."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.rundir import RunDir

_SHOWN = ("source", "url", "page_url", "image_url", "audio_url", "subtitles_url", "text", "text_source",
          "caption", "alt", "title", "figcaption", "clip_start", "clip_end", "image_width", "image_height",
          "audio_seconds", "scores")


def _rows_matching(path: Path, keys: set[str]) -> list[dict[str, Any]]:
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return []
    dataset = pads.dataset(str(path), format="parquet")
    names = set(dataset.schema.names)
    wanted = pa.array(sorted(keys), pa.string())
    condition = pc.field("key").isin(wanted)
    if "parent" in names:
        condition = condition | pc.field("parent").isin(wanted)
    columns = [c for c in dataset.schema.names if c not in ("image", "audio", "subtitles")]
    return dataset.to_table(filter=condition, columns=columns).to_pylist()


def history(run_dir: str | Path, key: str) -> list[dict[str, Any]]:
    """Events for ``key``, its ancestors and its descendants, in stage order."""
    rundir = RunDir(run_dir)
    manifest = json.loads((rundir.root / "manifest.json").read_text())
    stages = [s["name"] for s in manifest["stages"]]
    keys = {key}
    # widen to ancestors (a clip's audio, …) until stable; descendants come along through the parent match
    for _ in range(4):
        found = set(keys)
        for stage in stages:
            for row in _rows_matching(rundir.data_dir(stage), keys) + _rows_matching(rundir.rejects_dir(stage), keys):
                if row.get("key") == key or row.get("parent") in keys or row.get("key") in keys:
                    found.add(row["key"])
                    if row.get("parent"):
                        found.add(row["parent"])
        if found == keys:
            break
        keys = found
    events = []
    for stage in stages:
        for row in _rows_matching(rundir.data_dir(stage), keys):
            events.append({"stage": stage, "decision": "kept", **{k: row.get(k) for k in ("key", "parent", *_SHOWN)}})
        for row in _rows_matching(rundir.rejects_dir(stage), keys):
            events.append({"stage": stage, "decision": "rejected", **row})
    for index in sorted(rundir.shards_dir.glob("*.parquet")):
        table = pads.dataset(str(index)).to_table(filter=pc.field("key").isin(pa.array(sorted(keys))))
        for row in table.to_pylist():
            events.append({"stage": "shards", "decision": "written", "shard": index.stem, **row})
    return events


def format_history(key: str, events: list[dict[str, Any]]) -> str:
    if not events:
        return f"{key}: not found in this run directory"
    lines = []
    for e in events:
        head = f"[{e['stage']}] {e['decision']} {e.get('key')}"
        if e.get("parent"):
            head += f" (from {e['parent']})"
        if e["decision"] == "rejected":
            head += f": {e['reason']}" + (f" — {e['detail']}" if e.get("detail") else "")
        lines.append(head)
        if e["decision"] == "written":
            lines.append(f"    {e['shard']}.tar member {e['member']} offset {e['offset']} size {e['size']}")
            continue
        for name in _SHOWN:
            if e.get(name) not in (None, "", "{}"):
                lines.append(f"    {name}: {e[name]}")
    return "\n".join(lines)
