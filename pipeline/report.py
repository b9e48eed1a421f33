"""Human-readable summaries of a run: the funnel table printed at the end of ``run``/``demo``."""

from __future__ import annotations

from typing import Any


def funnel_table(stats: dict[str, dict[str, Any]]) -> str:
    """One line per stage: records in, outcome rows out (more than in where a stage fans out, e.g. one clip per
    subtitle cue), kept, and the rejects by reason, largest first."""
    header = f"{'stage':<10} {'in':>7} {'out':>7} {'kept':>7} {'rejected':>9}  reasons"
    lines = [header, "-" * len(header)]
    for stage, s in stats.items():
        rejected = s.get("rejected", {})
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0])))
        out = s.get("out", s["in"])
        lines.append(f"{stage:<10} {s['in']:>7} {out:>7} {s['kept']:>7} {sum(rejected.values()):>9}  {reasons}")
    return "\n".join(lines)
