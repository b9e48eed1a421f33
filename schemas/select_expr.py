"""The ``select`` stage's expression language: DuckDB SQL, one expression, over the record's columns and a derived
``modality``. Checked when the workflow loads (here, without Ray or any model) and evaluated on Arrow batches in
the workers (``stages/select.py``); both build the relation the same way, on a connection that reads nothing but
the batch (``connect``).

What an expression may not do, refused when it loads: read anything but the record (a subquery or a table function
such as ``read_text('/etc/passwd')`` or ``glob('/etc/*')``: the file would not be in the stage's fingerprint, and
the run directory's reader need not see it), depend on which records share a batch (a window function), or give a
different answer on another run (``random()``, ``now()``, ``uuid()``...: DuckDB's own list of functions with no
deterministic overload). The extension columns it reads (``pii``, ``embedding``, ...) are what the binder needs:
``extension_columns_read`` binds the expression without each one in turn, so the workflow check can ask that every
path into the stage writes them.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pyarrow as pa

ROW = "__mmcurate_row"
MODALITY = (
    "CASE WHEN image IS NOT NULL AND audio IS NOT NULL THEN 'image_audio' WHEN image IS NOT NULL THEN 'image' "
    "WHEN audio IS NOT NULL THEN 'audio' ELSE 'text' END"
)
# SQL's special values the parser reads as column names and the binder turns into the current time
_CLOCK_KEYWORDS = frozenset({"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp"})


def connect() -> Any:
    """A DuckDB connection with no file system, no network and no extension loading (external access off), its
    configuration locked: whatever an expression says, it reads only the Arrow tables handed to it."""
    import duckdb

    return duckdb.connect(config={"enable_external_access": False, "autoload_known_extensions": False,
                                  "autoinstall_known_extensions": False, "lock_configuration": True})


def selection(con: Any, table: pa.Table, where: str) -> Any:
    """A relation of (row number, keep) over ``table``, in row order; ``keep`` is false where ``where`` is null.
    ``SQLExpression`` parses exactly one expression: the text cannot end the query and start another."""
    import duckdb

    numbered = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    with_modality = con.from_arrow(numbered).select(duckdb.StarExpression(), duckdb.SQLExpression(MODALITY).alias("modality"))
    keep = duckdb.CoalesceOperator(duckdb.SQLExpression(where), duckdb.ConstantExpression(False))
    return with_modality.select(duckdb.ColumnExpression(ROW), keep.alias("keep")).order(ROW)


def _typed_empty_record(without: str | None = None) -> pa.Table:
    from mmcurate.schemas.record import EXTENSION_COLUMNS, RECORD_SCHEMA

    schema = RECORD_SCHEMA
    for name, make in EXTENSION_COLUMNS.items():
        if name != without:
            schema = schema.append(pa.field(name, make(1)))
    return schema.empty_table()


@functools.cache
def _nondeterministic_functions() -> frozenset[str]:
    """DuckDB's functions none of whose overloads is deterministic (``random``, ``now``, ``uuid``...)."""
    with connect() as con:
        rows = con.sql("SELECT function_name FROM duckdb_functions() GROUP BY function_name "
                       "HAVING bool_and(stability IS NOT NULL AND stability <> 'CONSISTENT')").fetchall()
    return frozenset(name for (name,) in rows)


def _refusals(node: Any) -> list[str]:
    """What, in DuckDB's parse tree of the expression (``json_serialize_sql``), an expression may not contain."""
    found: list[str] = []
    if isinstance(node, dict):
        kind = node.get("class")
        if kind == "SUBQUERY" or node.get("type") == "TABLE_FUNCTION":
            found.append("a subquery (an expression reads the record's columns, nothing else)")
        elif kind == "WINDOW":
            found.append(f"the window function {node.get('function_name')!r} (its value depends on which records "
                         f"share a batch)")
        elif kind == "FUNCTION" and node.get("function_name") in _nondeterministic_functions():
            found.append(f"{node['function_name']}(), which is not deterministic")
        elif kind == "COLUMN_REF" and len(names := node.get("column_names") or []) == 1 and \
                names[0].lower() in _CLOCK_KEYWORDS:
            found.append(f"{names[0]}, which is not deterministic")
        for value in node.values():
            found += _refusals(value)
    elif isinstance(node, list):
        for value in node:
            found += _refusals(value)
    return found


def check_predicate(where: str) -> None:
    """Raise ValueError unless ``where`` is one deterministic boolean DuckDB expression over record columns and
    ``modality`` that reads nothing else."""
    import duckdb

    with connect() as con:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [f"SELECT {where}"]).fetchall()[0][0])
        refused = [] if tree.get("error") else _refusals(tree.get("statements"))
        if refused:
            raise ValueError(f"{where!r} may not use {refused[0]}: a select's output must follow from the record "
                             f"alone, the same on every run")
        try:
            kind = selection(con, _typed_empty_record(), where).types[1]
        except duckdb.Error as err:
            raise ValueError(f"{where!r} is not a DuckDB expression over the record columns and modality: "
                             f"{str(err).splitlines()[0]}") from None
    if str(kind) != "BOOLEAN":
        raise ValueError(f"{where!r} is {kind}, not a boolean expression")


@functools.cache
def extension_columns_read(where: str) -> frozenset[str]:
    """The extension columns (``schemas.record.EXTENSION_COLUMNS``) ``where`` reads: those without which it no
    longer binds. ``where`` is a checked predicate (``check_predicate``)."""
    import duckdb

    from mmcurate.schemas.record import EXTENSION_COLUMNS

    needed = set()
    with connect() as con:
        for name in EXTENSION_COLUMNS:
            try:
                selection(con, _typed_empty_record(without=name), where).types  # noqa: B018 - binding is the check
            except duckdb.Error:
                needed.add(name)
    return frozenset(needed)
