"""The ``score_filter`` global stage: keep the top fraction of the whole run by one score (DataComp's "CLIP score
top 30 %"), the cut computed exactly over every record that has the score, never per batch.

The cut is the k-th largest score, k = ceil(top_fraction × n), found without collecting the scores on the driver:
the score column is materialized in the object store, then histograms narrow the range that holds rank k (the
driver sums 4,096 counts per batch) until the values left in that range are few enough to sort exactly. Records
scoring at least the cut are kept, so ties at the cut are all kept (the kept fraction may exceed
``top_fraction`` by the ties). Records without the score are kept or rejected by ``missing``. A record a person
labelled "match" (``human_match``, the labels stage) is kept whatever its score.
"""

from __future__ import annotations

import fnmatch
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import ScoreFilterConfig
from mmcurate.stages.base import Decisions, GlobalStage, InputError, StageContext

_BINS = 4096
_EXACT = 200_000  # values in the range that holds rank k few enough to fetch and sort


def score_values(batch: pa.Table, pattern: str) -> list[float | None]:
    """Each record's score named by ``pattern`` (a key of ``scores``, or an fnmatch pattern such as
    ``clip_score.*.image_text``: the first matching key in key order), None where it has none."""
    if not any(c in pattern for c in "*?["):
        import pyarrow.compute as pc

        return pc.map_lookup(batch["scores"], pa.scalar(pattern), "first").to_pylist()
    values: list[float | None] = []
    for pairs in batch["scores"].to_pylist():
        matching = sorted((k, v) for k, v in (pairs or []) if fnmatch.fnmatchcase(k, pattern))
        values.append(matching[0][1] if matching else None)
    return values


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)  # NaN and ±inf count as no score


def _scores_column(batch: pa.Table, pattern: str) -> pa.Table:
    return pa.table({"v": np.array([v for v in score_values(batch, pattern) if _usable(v)], np.float64)})


def _histogram(batch: pa.Table, lo: float, hi: float, hi_closed: bool) -> pa.Table:
    """Counts of the values in [lo, hi] (or [lo, hi) when the range is a bin whose upper edge belongs to the next
    bin: values on it were counted there)."""
    values = batch["v"].to_numpy()
    inside = values[(values >= lo) & ((values <= hi) if hi_closed else (values < hi))]
    counts, _ = np.histogram(inside, bins=_BINS, range=(lo, hi))
    return pa.table({"counts": [counts.tolist()]})


def kth_largest(values: Any, k: int) -> float:
    """The k-th largest value (1-based) of a Ray Dataset with one float column ``v``: histogram refinement, then
    an exact sort of the few values left in the bin that holds rank k."""
    import ray.data.aggregate as agg
    from ray.data.expressions import col

    stats = values.aggregate(agg.Min("v"), agg.Max("v"))
    lo, hi = float(stats["min(v)"]), float(stats["max(v)"])
    need, hi_closed = k, True  # rank k counted from the top of the range
    while True:
        if lo == hi:
            return lo
        counts = np.zeros(_BINS, np.int64)
        for part in values.map_batches(_histogram, fn_kwargs={"lo": lo, "hi": hi, "hi_closed": hi_closed},
                                       batch_format="pyarrow").iter_rows():
            counts += np.array(part["counts"], np.int64)
        from_top = np.cumsum(counts[::-1])
        top_bin = int(np.searchsorted(from_top, need))  # bins counted from the top
        b = _BINS - 1 - top_bin
        width = (hi - lo) / _BINS
        bin_lo, bin_hi = lo + b * width, (lo + (b + 1) * width if b < _BINS - 1 else hi)
        need -= int(from_top[top_bin - 1]) if top_bin else 0
        closed = hi_closed and b == _BINS - 1  # only the top bin of a closed range holds its upper edge
        if counts[b] <= _EXACT or bin_hi - bin_lo <= abs(bin_hi) * 1e-12:
            upper = col("v") <= bin_hi if closed else col("v") < bin_hi
            left = values.filter(expr=(col("v") >= bin_lo) & upper)
            exact = np.sort(np.concatenate([batch["v"] for batch in left.iter_batches(batch_format="numpy")]
                                           or [np.array([], np.float64)]))[::-1]
            if len(exact) < need:
                raise RuntimeError(f"score cut: the bin [{bin_lo}, {bin_hi}] holds {len(exact)} values, rank {need} "
                                   f"asked (counted {counts[b]})")
            return float(exact[need - 1])
        lo, hi, hi_closed = bin_lo, bin_hi, closed


class ScoreFilterStage(GlobalStage[ScoreFilterConfig]):
    def summarize(self, dataset: Any, ctx: StageContext) -> dict[str, Any]:
        values = dataset.map_batches(_scores_column, fn_kwargs={"pattern": self.config.score},
                                     batch_format="pyarrow").materialize()
        scored = values.count()
        if scored == 0:
            if dataset.count():  # a misspelt score name would otherwise keep everything, silently
                raise InputError(f"stage {self.name}: no record has a score matching {self.config.score!r}")
            return {"scored": 0, "keep": 0, "cut": None}
        # exact: 0.07 x 100 is 7.000000000000001 in floating point, whose ceiling is 8
        keep = math.ceil(Fraction(str(self.config.top_fraction)) * scored)
        return {"scored": scored, "keep": keep, "cut": kth_largest(values, keep)}

    def decide(self, batch: pa.Table, summary: dict[str, Any]) -> pa.Table:
        decisions = Decisions(batch)
        values = score_values(batch, self.config.score)
        missing = [not _usable(v) for v in values]
        # a person said "match" (the labels stage): kept whatever its score; it still counts toward the cut
        human = batch["human_match"].to_pylist() if "human_match" in batch.column_names else [None] * len(values)
        if self.config.missing == "reject":
            decisions.reject([m and not h for m, h in zip(missing, human)], Reason.SCORE_BELOW_CUT,
                             f"no score {self.config.score}")
        cut = summary["cut"]
        if cut is not None:
            low = [not m and v < cut and not h for v, m, h in zip(values, missing, human)]
            decisions.reject(low, Reason.SCORE_BELOW_CUT, [
                f"{self.config.score} {v:.4f} < cut {cut:.4f} (top {self.config.top_fraction:g} of "
                f"{summary['scored']} scored)" if is_low else None for v, is_low in zip(values, low)])
        return decisions.outcomes()
