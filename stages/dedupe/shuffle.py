"""The two Ray Data moves every dedupe method is made of: process rows *by partition* (all rows whose key hashes to
one of ``partitions`` groups reach one call, as one Arrow table, so the work inside is vectorised), and *join* two
datasets on a key column the same way.

Why partitions and not ``groupby(key).map_groups`` on the key itself: a method's keys (band values, digests,
node ids) are nearly all distinct, and ``map_groups`` calls Python once per group; a few dozen partitions keep
the calls few and the per-row work in numpy and Arrow. Each partition's table must fit one worker's memory.

Both run under Ray Data's sort-based shuffle (``sort_shuffle``): its hash shuffle starts aggregator actors for
every operation, seconds each here, and a dedupe run makes dozens of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

PART = "_part"
_SIDE = "_side"


@contextmanager
def sort_shuffle(dataset: Any) -> Iterator[None]:
    """Run what is built from ``dataset`` inside the block with Ray Data's sort-based shuffle, and put the
    caller's strategy back after (a dataset shares its context with every dataset derived from it)."""
    from ray.data.context import ShuffleStrategy

    context = dataset.context
    before = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = before


def stable_hash(values: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """A uint64 per value, the same on every worker and every run (pandas' keyed SipHash, not Python's salted
    ``hash``): what decides a row's partition."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    if values.dtype.kind in "iu":
        return pd.util.hash_array(values.astype(np.uint64, copy=False))
    return pd.util.hash_array(np.asarray(values, dtype=object))


def with_partition(table: pa.Table, column: str, partitions: int) -> pa.Table:
    part = (stable_hash(table[column]) % np.uint64(partitions)).astype(np.int32)
    return table.append_column(PART, pa.array(part))


def by_partition(dataset: Any, by: str, partitions: int, fn: Callable[..., pa.Table], **fn_kwargs: Any) -> Any:
    """``fn(table, **fn_kwargs)`` once per partition of ``dataset`` by column ``by``; ``fn`` sees every row whose
    ``by`` value hashes to that partition (rows arrive in any order: ``fn`` must not depend on it)."""

    def call(table: pa.Table) -> pa.Table:
        return fn(table.drop_columns([PART]), **fn_kwargs)

    keyed = dataset.map_batches(with_partition, fn_kwargs={"column": by, "partitions": partitions},
                                batch_format="pyarrow")
    return keyed.groupby(PART).map_groups(call, batch_format="pyarrow")


def arrow_schema(dataset: Any) -> pa.Schema:
    schema = dataset.schema()
    return schema.base_schema if hasattr(schema, "base_schema") else schema


def _widened(table: pa.Table, schema: pa.Schema, side: int) -> pa.Table:
    """``table`` with every column of ``schema`` (nulls where it has none) and its side."""
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema).append_column(_SIDE, pa.array([side] * table.num_rows,
                                                                                     pa.int8()))


def join(left: Any, right: Any, on: str, right_on: str, partitions: int, how: str = "inner") -> Any:
    """Rows of ``left`` joined with rows of ``right`` where ``left[on] == right[right_on]`` (``how``: ``inner``,
    ``left`` keeping unmatched left rows with nulls, or ``anti``: left rows with no match). Right's columns keep
    their names, so the two sides' other column names must differ."""
    left_schema, right_schema = arrow_schema(left), arrow_schema(right)
    clash = (set(left_schema.names) & set(right_schema.names)) - {on} if on == right_on else \
        set(left_schema.names) & set(right_schema.names)
    if clash:
        raise ValueError(f"join: both sides have columns {sorted(clash)}")
    key_type = left_schema.field(on).type
    fields = [*left_schema] + [f for f in right_schema if f.name != right_on or on != right_on]
    schema = pa.schema(fields)
    key = "_join_key"

    def tag(table: pa.Table, name: str, side: int) -> pa.Table:
        widened = _widened(table, schema, side)
        return widened.append_column(key, table[name].cast(key_type))

    both = left.map_batches(tag, fn_kwargs={"name": on, "side": 0}, batch_format="pyarrow").union(
        right.map_batches(tag, fn_kwargs={"name": right_on, "side": 1}, batch_format="pyarrow"))
    left_names = list(left_schema.names)
    right_names = [f.name for f in right_schema if f.name != right_on or on != right_on]
    return by_partition(both, key, partitions, _join_partition, left_names=left_names, right_names=right_names,
                        how=how)


def _join_partition(table: pa.Table, left_names: list[str], right_names: list[str], how: str) -> pa.Table:
    side = table[_SIDE]
    lhs = table.filter(pc.equal(side, 0))
    rhs = table.filter(pc.equal(side, 1))
    lk = pd.Series(lhs["_join_key"].to_numpy(zero_copy_only=False))
    rk = pd.Series(rhs["_join_key"].to_numpy(zero_copy_only=False))
    if how == "anti":
        return lhs.filter(pa.array(~lk.isin(rk).to_numpy())).select(left_names)
    # indices, not a join of the tables themselves: Arrow's hash join refuses list payloads (embeddings)
    pairs = pd.DataFrame({"k": lk, "li": np.arange(len(lk))}).merge(
        pd.DataFrame({"k": rk, "ri": np.arange(len(rk))}), on="k", how="left" if how == "left" else "inner")
    out = lhs.select(left_names).take(pa.array(pairs["li"].to_numpy()))
    right_index = pairs["ri"].to_numpy()
    matched = ~np.isnan(right_index) if right_index.dtype.kind == "f" else np.ones(len(right_index), bool)
    taken = rhs.select(right_names).take(pa.array(np.where(matched, right_index, 0).astype(np.int64),
                                                  mask=~matched) if len(rhs) else pa.nulls(len(pairs), pa.int64()))
    for name in right_names:
        out = out.append_column(name, taken[name])
    return out
