"""What the labels did to a finished run, for the line under the funnel: the samples people dropped, the ones they
kept that a score stage would have dropped (``human_match`` below its threshold), the texts they corrected."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from mmcurate.pipeline.explain import _dataset, _parquet_files
from mmcurate.pipeline.rundir import RunDir


def labels_effect(run_dir: str | Path) -> str | None:
    rundir = RunDir(str(run_dir))
    manifest = rundir.read_json("manifest.json")
    if rundir.remote or manifest is None:
        return None
    stats = rundir.read_json("stats.json") or {}
    lines = []
    for stage in manifest["stages"]:
        name = stage["name"]
        if stage["kind"] == "labels":
            dropped = {r: n for r, n in (stats.get(name, {}).get("rejected") or {}).items() if r.startswith("label_")}
            files = _parquet_files(rundir.data_dir(name))
            corrected = 0
            if files:
                sources = _dataset(files).to_table(columns=["text_source"])["text_source"]
                corrected = pc.sum(pc.equal(sources, "label")).as_py() or 0
            if dropped or corrected:
                lines.append(f"{name}: {sum(dropped.values())} dropped by people "
                             f"({', '.join(f'{r}={n}' for r, n in sorted(dropped.items())) or 'none'}), "
                             f"{corrected} text(s) corrected")
        elif stage["kind"] == "clip_score":
            thresholds = ((rundir.marker(name) or {}).get("decided_by") or {}).get("min_score") or {}
            files = _parquet_files(rundir.data_dir(name))
            if not files or not thresholds:
                continue
            table = _dataset(files).to_table(columns=["scores", "human_match"]) \
                if "human_match" in _dataset(files).schema.names else None
            if table is None:
                continue
            kept = 0
            for pairs, human in zip(table["scores"].to_pylist(), table["human_match"].to_pylist()):
                if human:
                    for key, value in pairs or []:
                        modality = key.rsplit(".", 1)[-1].split("_")[0]
                        if key.startswith("clip_score.") and value < thresholds.get(modality, float("-inf")):
                            kept += 1
                            break
            if kept:
                lines.append(f"{name}: {kept} kept by people below the threshold (human_match), which it would "
                             f"have dropped as clip_score_low")
    return "labels: " + "; ".join(lines) if lines else None
