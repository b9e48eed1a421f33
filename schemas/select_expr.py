"""The ``select`` stage's expression language: DuckDB SQL, one expression, over the record's columns and a derived
``modality``. Checked when the workflow loads (here, without Ray or any model) and evaluated on Arrow batches in
the workers (``stages/select.py``); both build the relation the same way."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

ROW = "__mmcurate_row"
MODALITY = (
    "CASE WHEN image IS NOT NULL AND audio IS NOT NULL THEN 'image_audio' WHEN image IS NOT NULL THEN 'image' "
    "WHEN audio IS NOT NULL THEN 'audio' ELSE 'text' END"
)


def selection(con: Any, table: pa.Table, where: str) -> Any:
    """A relation of (row number, keep) over ``table``, in row order; ``keep`` is false where ``where`` is null.
    ``SQLExpression`` parses exactly one expression: the text cannot end the query and start another."""
    import duckdb

    numbered = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    with_modality = con.from_arrow(numbered).select(duckdb.StarExpression(), duckdb.SQLExpression(MODALITY).alias("modality"))
    keep = duckdb.CoalesceOperator(duckdb.SQLExpression(where), duckdb.ConstantExpression(False))
    return with_modality.select(duckdb.ColumnExpression(ROW), keep.alias("keep")).order(ROW)


def _typed_empty_record() -> pa.Table:
    from mmcurate.schemas.record import EXTENSION_COLUMNS, RECORD_SCHEMA

    schema = RECORD_SCHEMA
    for name, make in EXTENSION_COLUMNS.items():
        schema = schema.append(pa.field(name, make(1)))
    return schema.empty_table()


def check_predicate(where: str) -> None:
    """Raise ValueError unless ``where`` is one boolean DuckDB expression over record columns and ``modality``."""
    import duckdb

    try:
        with duckdb.connect() as con:
            kind = selection(con, _typed_empty_record(), where).types[1]
    except duckdb.Error as err:
        raise ValueError(f"{where!r} is not a DuckDB expression over the record columns and modality: "
                         f"{str(err).splitlines()[0]}") from None
    if str(kind) != "BOOLEAN":
        raise ValueError(f"{where!r} is {kind}, not a boolean expression")
