"""``mmcurate label report DIR``: the automatic filter judged by the people.

A labelled sample is a positive when a person said "no match" (it should go). The filter dropped it when its score
(the one its task showed, ``exported.parquet``) was below the threshold clip_score applied to it (also as its task
showed: exports before and after a re-run at a new threshold hold samples judged at each). Precision: of the
labelled samples the filter dropped, the share people also rejected; recall: of those people rejected, the share
the filter dropped. The best threshold is the one cut for every sample that agrees with the most labels (ties: the
higher F1, then the nearest to the current threshold, the latest export's), searched over the current threshold
and the midpoints between the labelled scores: a cut with the current one's figures is the current one. Labels of a
single class leave precision or recall undefined: the report says so, and suggests no other cut. A label whose
sample is not in ``exported.parquet`` (no score shown) is left out, and counted.
"""

from __future__ import annotations

from typing import Any

from mmcurate.pipeline.labeling.select import LabelingError
from mmcurate.pipeline.labeling.store import read, require_directory, write_json


# (score shown, the threshold clip_score applied to that sample, people said "no match")
Pair = tuple[float, float, bool]


def _counts(pairs: list[Pair], cut: float | None = None) -> dict[str, int]:
    """The filter against the people: each sample judged by its own threshold (exports made before and after a
    re-run at a new threshold show samples at both), or every one by ``cut`` (a threshold the report weighs)."""
    def dropped(score: float, threshold: float) -> bool:
        return score < (threshold if cut is None else cut)

    tp = sum(1 for s, t, bad in pairs if dropped(s, t) and bad)
    fp = sum(1 for s, t, bad in pairs if dropped(s, t) and not bad)
    fn = sum(1 for s, t, bad in pairs if not dropped(s, t) and bad)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(pairs) - tp - fp - fn}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    agree = (c["tp"] + c["tn"]) / max(1, sum(c.values()))
    return {"precision": precision, "recall": recall, "f1": f1, "agreement": agree}


def one_class(pairs: list[Pair]) -> bool:
    return len({bad for _, _, bad in pairs}) < 2


def best_threshold(pairs: list[Pair], current: float) -> float:
    if one_class(pairs):  # any cut past all the scores "agrees"; the labels say nothing about where to cut
        return current
    scores = sorted({s for s, _, _ in pairs})
    cuts = [current, scores[0] - 1e-6, *[(a + b) / 2 for a, b in zip(scores, scores[1:])], scores[-1] + 1e-6]

    def rank(cut: float) -> tuple:
        r = _rates(_counts(pairs, cut))
        return (r["agreement"], r["f1"], -abs(cut - current))

    return max(cuts, key=rank)  # max keeps the first of equals: the current threshold on a tie


def report(run_dir: str) -> dict[str, Any]:
    folder = require_directory(run_dir)
    labels, exported = read(folder / "labels.parquet"), read(folder / "exported.parquet")
    if labels is None or exported is None:
        raise LabelingError(f"{folder}: no labels yet (mmcurate label export, then mmcurate label import)")
    shown = {(r["key"]): r for r in exported.to_pylist() if r["score"] is not None and r["threshold"] is not None}
    judged = [l for l in labels.to_pylist() if l["verdict"] is not None]
    not_shown = sum(1 for l in judged if l["key"] not in shown)
    out: dict[str, Any] = {"labels": labels.num_rows, "not_exported": not_shown, "by_modality": {}}
    for modality in sorted({r["modality"] for r in shown.values()}):
        rows = [(shown[l["key"]], l) for l in judged if l["key"] in shown and shown[l["key"]]["modality"] == modality]
        if not rows:
            continue
        # the latest export's threshold: the one a suggested cut replaces (and keeps on a tie)
        current = max(enumerate(rows), key=lambda i_row: (i_row[1][0]["exported_at"] or "", i_row[0]))[1][0][
            "threshold"]
        pairs = [(s["score"], s["threshold"], l["verdict"] == "no_match") for s, l in rows]
        counts = _counts(pairs)
        best = best_threshold(pairs, current)
        out["by_modality"][modality] = {
            "judged": len(pairs), "human_rejected": sum(bad for _, _, bad in pairs), "threshold": current,
            "thresholds": sorted({t for _, t, _ in pairs}), "model": rows[0][0]["model"], **counts,
            **_rates(counts), "best_threshold": round(best, 6),
            "at_best": {**_counts(pairs, best), **_rates(_counts(pairs, best))},
            "corrected_texts": sum(1 for _, l in rows if l["text"]), "one_class": one_class(pairs),
        }
    if not out["by_modality"]:
        raise LabelingError(f"{folder}: no label with a verdict on a scored sample to judge the filter by"
                            + (f" ({_left_out(not_shown)})" if not_shown else ""))
    write_json(run_dir, "report.json", out)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _left_out(n: int) -> str:
    return (f"{n} label(s) with a verdict left out: their samples are not in exported.parquet, so no score is "
            f"known for them (exported from another run directory? export them from this one to record them)")


def _filter(modality: str, r: dict[str, Any]) -> str:
    thresholds = r.get("thresholds") or [r["threshold"]]
    if len(thresholds) < 2:
        return f"{modality}-text filter (model {r['model']}, threshold {r['threshold']:g})"
    # exports before and after a re-run at a new threshold: each sample is judged at the one applied to it
    return (f"{modality}-text filter (model {r['model']}, thresholds {', '.join(f'{t:g}' for t in thresholds)}, "
            f"each sample judged at its own; now {r['threshold']:g})")


def format_report(out: dict[str, Any]) -> str:
    lines = []
    for modality, r in out["by_modality"].items():
        best = r["at_best"]
        if r.get("one_class"):
            word = "no match" if r["human_rejected"] else "match"
            lines += [
                f"{_filter(modality, r)} against {r['judged']} "
                f"human labels, all {word!r} ({r['corrected_texts']} corrected texts):",
                f"  precision: {_fmt(r['precision'])}  ({r['tp']} of the {r['tp'] + r['fp']} it dropped were no match)",
                f"  recall: {_fmt(r['recall'])}  ({r['tp']} of the {r['tp'] + r['fn']} no-match samples dropped)",
                f"  agreement: {_fmt(r['agreement'])}",
                f"  best threshold: none suggested: the labels hold one class only (precision or recall is "
                f"undefined); label samples of both kinds",
            ]
            continue
        lines += [
            f"{_filter(modality, r)} against {r['judged']} "
            f"human labels ({r['human_rejected']} no match, {r['corrected_texts']} corrected texts):",
            f"  precision: {_fmt(r['precision'])}  ({r['tp']} of the {r['tp'] + r['fp']} it dropped were no match)",
            f"  recall: {_fmt(r['recall'])}  ({r['tp']} of the {r['tp'] + r['fn']} no-match samples dropped)",
            f"  agreement: {_fmt(r['agreement'])}",
            f"  best threshold: {r['best_threshold']:.4f}  (agreement {_fmt(best['agreement'])}, precision "
            f"{_fmt(best['precision'])}, recall {_fmt(best['recall'])})"
            + ("  = the current threshold" if r["best_threshold"] == round(r["threshold"], 6) else ""),
        ]
    if out.get("not_exported"):
        lines.append(_left_out(out["not_exported"]))
    return "\n".join(lines)
