"""From pairs to drops, for every method: exact digests group directly (a group's smallest node survives); the
near-duplicate methods link verified pairs into connected components and drop every member but the smallest,
each with its distance to that survivor measured directly (a member linked through a chain may lie beyond the
method's threshold from it; its detail says so)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.stages.dedupe.components import components
from mmcurate.stages.dedupe.drops import DROP_SCHEMA, detail
from mmcurate.stages.dedupe.shuffle import by_partition, join
from mmcurate.stages.dedupe.signatures import key_of


def empty(schema: pa.Schema = DROP_SCHEMA) -> Any:
    import ray

    return ray.data.from_arrow(schema.empty_table())


def split(dataset: Any, column: str) -> tuple[Any, Any]:
    """(rows with ``column`` set, rows without)."""
    has = dataset.map_batches(lambda t: t.filter(pc.is_valid(t[column])), batch_format="pyarrow")
    lacks = dataset.map_batches(lambda t: t.filter(pc.is_null(t[column])), batch_format="pyarrow")
    return has, lacks


def _exact_partition(table: pa.Table, column: str, reason: str, method: str, measures: str) -> pa.Table:
    df = pd.DataFrame({"node": table["node"].to_pylist(), "d": table[column].to_pylist()})
    survivor = df.groupby("d")["node"].transform("min")
    dropped = df["node"] != survivor
    keys = [key_of(n) for n in df["node"][dropped]]
    survivors = [key_of(n) for n in survivor[dropped]]
    return pa.Table.from_pydict({
        "key": keys, "reason": [reason] * len(keys), "method": [method] * len(keys), "other": survivors,
        "distance": [0.0] * len(keys), "detail": [detail(reason, s, measures) for s in survivors],
    }, schema=DROP_SCHEMA)


def exact(nodes: Any, column: str, reason: str, method: str, measures: str, partitions: int) -> tuple[Any, Any]:
    """(drops, the nodes left) after keeping the smallest node of each group of equal ``column`` values."""
    has, _ = split(nodes, column)
    drops = by_partition(has.select_columns(["node", column]), column, partitions, _exact_partition, column=column,
                         reason=reason, method=method, measures=measures).materialize()
    return drops, remaining(nodes, drops, partitions)


def remaining(nodes: Any, drops: Any, partitions: int) -> Any:
    """``nodes`` less the records ``drops`` names."""
    if drops.count() == 0:
        return nodes
    dropped = drops.select_columns(["key"]).rename_columns({"key": "_dropped"})
    return join(nodes, dropped, "key", "_dropped", partitions, how="anti").materialize()


Measure = Callable[[pa.Table], tuple[list[float], list[str], list[bool]]]


def linked(nodes: Any, pairs: Any, payload: list[str], reason: str, method: str, measure: Measure,
           partitions: int, payload_nodes: Any = None) -> tuple[Any, Any]:
    """(drops, the nodes left) from verified ``pairs`` (``a``, ``b`` node columns): components, survivors, and
    each member's distance to its survivor by ``measure`` over the ``m_*`` and ``s_*`` payload columns (member
    and survivor, read from ``payload_nodes``, default ``nodes``), which returns (distance, measures text, within
    the method's threshold) per row."""
    edges = pairs.select_columns(["a", "b"]).materialize()
    if edges.count() == 0:
        return empty(), nodes
    members = components(edges, partitions)
    side = (nodes if payload_nodes is None else payload_nodes).select_columns(["node", *payload])
    as_member = side.rename_columns({"node": "_m", **{c: f"m_{c}" for c in payload}})
    as_survivor = side.rename_columns({"node": "_s", **{c: f"s_{c}" for c in payload}})
    joined = join(join(members, as_member, "node", "_m", partitions), as_survivor, "survivor", "_s", partitions)

    def rows(table: pa.Table) -> pa.Table:
        distances, texts, within = measure(table)
        keys = [key_of(n) for n in table["node"].to_pylist()]
        survivors = [key_of(n) for n in table["survivor"].to_pylist()]
        details = [detail(reason, s, t if ok else f"{t}; linked to it through a chain of {method} matches")
                   for s, t, ok in zip(survivors, texts, within)]
        return pa.Table.from_pydict({"key": keys, "reason": [reason] * len(keys), "method": [method] * len(keys),
                                     "other": survivors, "distance": distances, "detail": details},
                                    schema=DROP_SCHEMA)

    drops = joined.map_batches(rows, batch_format="pyarrow").materialize()
    return drops, remaining(nodes, drops, partitions)
