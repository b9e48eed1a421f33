"""Connected components of a pair list, over Ray Data: the alternating large-star / small-star rounds of Kiveris
et al., "Connected Components in MapReduce and Beyond" (SoCC 2014), O(log² n) rounds, each one shuffle of the
edges by node. Nodes are strings ordered by the survivor rule, so a component's smallest node, where every
round points its members, is its survivor.

Edges are ``(a, b)`` with ``a > b``. In a round, for each node u with neighbours N(u) and m = min(N(u) ∪ {u}):
  * large-star: every neighbour larger than u is linked to m instead of u;
  * small-star: u and its neighbours smaller than u are all linked to m (the smallest of them).
Neither drops a component's connectivity; when neither changes anything every component is a star around its
smallest node, and the edges read ``(member, survivor)``.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from mmcurate.stages.dedupe.shuffle import by_partition

log = logging.getLogger("mmcurate.stage.dedupe")
EDGE_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])
_ROUND_SCHEMA = EDGE_SCHEMA.append(pa.field("changed", pa.bool_()))
MAX_ROUNDS = 200


def _both_directions(table: pa.Table) -> pa.Table:
    return pa.table({"n": pa.concat_arrays([table["a"].combine_chunks(), table["b"].combine_chunks()]),
                     "m": pa.concat_arrays([table["b"].combine_chunks(), table["a"].combine_chunks()])})


def _large_star(table: pa.Table) -> pa.Table:
    df = table.to_pandas().drop_duplicates()
    lowest = df.groupby("n")["m"].transform("min")
    df["low"] = lowest.where(lowest < df["n"], df["n"])
    up = df[df["m"] > df["n"]]
    out = pd.DataFrame({"a": up["m"], "b": up["low"], "changed": up["low"] != up["n"]})
    return pa.Table.from_pandas(out, schema=_ROUND_SCHEMA, preserve_index=False)


def _small_star(table: pa.Table) -> pa.Table:
    df = table.to_pandas()[["a", "b"]].drop_duplicates()
    low = df.groupby("a")["b"].transform("min")
    several = df.groupby("a")["b"].transform("size") > 1
    members = pd.concat([pd.DataFrame({"a": df["a"], "b": low, "changed": several}),
                         pd.DataFrame({"a": df["b"], "b": low, "changed": several})[df["b"] != low]])
    members = members.groupby(["a", "b"], as_index=False)["changed"].any()
    return pa.Table.from_pandas(members, schema=_ROUND_SCHEMA, preserve_index=False)


def components(edges: Any, partitions: int) -> Any:
    """``(a, b)`` edges (any orientation, repeats allowed) → a materialized dataset of ``(node, survivor)``, one row
    per node of a component other than its survivor."""
    import pyarrow.compute as pc

    def oriented(table: pa.Table) -> pa.Table:
        a, b = table["a"], table["b"]
        keep = pc.not_equal(a, b)
        a, b = pc.filter(a, keep), pc.filter(b, keep)
        larger = pc.greater(a, b)
        return pa.table({"a": pc.if_else(larger, a, b), "b": pc.if_else(larger, b, a)})

    current = edges.map_batches(oriented, batch_format="pyarrow").materialize()
    for round_no in range(1, MAX_ROUNDS + 1):
        large = by_partition(current.map_batches(_both_directions, batch_format="pyarrow"), "n", partitions,
                             _large_star).materialize()
        small = by_partition(large.select_columns(["a", "b"]), "a", partitions, _small_star).materialize()
        changed = _count_true(large) + _count_true(small)
        log.debug("components: round %d, %d changed", round_no, changed)
        current = small.select_columns(["a", "b"])
        if changed == 0:
            return current.rename_columns({"a": "node", "b": "survivor"})
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")


def _count_true(dataset: Any) -> int:
    if dataset.count() == 0:
        return 0
    return int(dataset.sum("changed") or 0)
