"""``mmcurate label report DIR``: the automatic filter judged by the people.

A labelled sample is a positive when a person said "no match" (it should go). The filter dropped it when its score
(the one its task showed, ``exported.parquet``) was below the threshold. Precision: of the labelled samples the
filter dropped, the share people also rejected; recall: of those people rejected, the share the filter dropped.
The best threshold is the cut that agrees with the most labels (ties: the higher F1, then the nearest to the
current threshold), searched over the midpoints between the labelled scores.
"""

from __future__ import annotations

from typing import Any

from mmcurate.pipeline.labeling.select import LabelingError
from mmcurate.pipeline.labeling.store import labels_dir, read, write_json


def _counts(pairs: list[tuple[float, bool]], threshold: float) -> dict[str, int]:
    tp = sum(1 for s, bad in pairs if s < threshold and bad)
    fp = sum(1 for s, bad in pairs if s < threshold and not bad)
    fn = sum(1 for s, bad in pairs if s >= threshold and bad)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(pairs) - tp - fp - fn}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    agree = (c["tp"] + c["tn"]) / max(1, sum(c.values()))
    return {"precision": precision, "recall": recall, "f1": f1, "agreement": agree}


def best_threshold(pairs: list[tuple[float, bool]], current: float) -> float:
    scores = sorted({s for s, _ in pairs})
    cuts = [scores[0] - 1e-6, *[(a + b) / 2 for a, b in zip(scores, scores[1:])], scores[-1] + 1e-6]

    def rank(cut: float) -> tuple:
        r = _rates(_counts(pairs, cut))
        return (r["agreement"], r["f1"], -abs(cut - current))

    return max(cuts, key=rank)


def report(run_dir: str) -> dict[str, Any]:
    folder = labels_dir(run_dir)
    labels, exported = read(folder / "labels.parquet"), read(folder / "exported.parquet")
    if labels is None or exported is None:
        raise LabelingError(f"{folder}: no labels yet (mmcurate label export, then mmcurate label import)")
    shown = {(r["key"]): r for r in exported.to_pylist() if r["score"] is not None and r["threshold"] is not None}
    out: dict[str, Any] = {"labels": labels.num_rows, "by_modality": {}}
    for modality in sorted({r["modality"] for r in shown.values()}):
        rows = [(shown[l["key"]], l) for l in labels.to_pylist()
                if l["key"] in shown and shown[l["key"]]["modality"] == modality and l["verdict"] is not None]
        if not rows:
            continue
        current = rows[0][0]["threshold"]
        pairs = [(s["score"], l["verdict"] == "no_match") for s, l in rows]
        counts = _counts(pairs, current)
        best = best_threshold(pairs, current)
        out["by_modality"][modality] = {
            "judged": len(pairs), "human_rejected": sum(bad for _, bad in pairs), "threshold": current,
            "model": rows[0][0]["model"], **counts, **_rates(counts),
            "best_threshold": round(best, 6), "at_best": {**_counts(pairs, best), **_rates(_counts(pairs, best))},
            "corrected_texts": sum(1 for _, l in rows if l["text"]),
        }
    if not out["by_modality"]:
        raise LabelingError(f"{folder}: no label with a verdict on a scored sample to judge the filter by")
    write_json(run_dir, "report.json", out)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_report(out: dict[str, Any]) -> str:
    lines = []
    for modality, r in out["by_modality"].items():
        best = r["at_best"]
        lines += [
            f"{modality}-text filter (model {r['model']}, threshold {r['threshold']:g}) against {r['judged']} "
            f"human labels ({r['human_rejected']} no match, {r['corrected_texts']} corrected texts):",
            f"  precision: {_fmt(r['precision'])}  ({r['tp']} of the {r['tp'] + r['fp']} it dropped were no match)",
            f"  recall: {_fmt(r['recall'])}  ({r['tp']} of the {r['tp'] + r['fn']} no-match samples dropped)",
            f"  agreement: {_fmt(r['agreement'])}",
            f"  best threshold: {r['best_threshold']:.4f}  (agreement {_fmt(best['agreement'])}, precision "
            f"{_fmt(best['precision'])}, recall {_fmt(best['recall'])})",
        ]
    return "\n".join(lines)
