"""The stage contract.

A stage turns records (``mmcurate.schemas.record.RECORD_SCHEMA``, plus the extension columns earlier stages added)
into *outcome rows*: the same columns plus ``_reason``/``_detail``/``_first``. A null reason means kept; anything
else is a reject. Every candidate a stage considers yields at least one outcome row, which is what lets the runner
prove kept + rejected = out, and in = the upstream's committed rows, for every stage.

A stage's resources are its config's fields (``StageConfig``: ``num_cpus``, ``num_gpus``, ``batch_size``,
``concurrency``, ``threads``); ``on_actors`` builds the one kind of actor pool every stage runs on. Each kind is
registered once (``schemas.stage_configs.register``). Roles, one base class each:

  * ``MapStage`` (role ``map``): records in, outcome rows out, batch by batch. ``setup`` loads models once per
    worker. Two ways to fill it:
      - ``RecordStage``: one record at a time (``process``; ``kept``/``rejected`` build the rows). A record may
        fan out into several rows (one clip per subtitle cue). In a streamed segment, ``config.threads`` records are
        in hand at once and a record goes through consecutive record stages in one thread.
      - ``BatchStage``: a whole Arrow batch at once (``process_batch``: a model's forward pass), one outcome row
        per record, decided with ``Decisions`` (mark rows rejected by a mask, set columns, add scores). A stage
        that adds an extension column is a batch stage: a record stage's rows keep its input's columns.
    The base marks each record's first outcome row (``_first``), so the runner can count the records that entered,
    and turns an unexpected exception on one record into an ``internal_error`` reject row (a batch that raises is
    retried record by record, so only the records that raise become rows) instead of a failed stage.
  * ``SourceStage`` (role ``source``, the crawl): cuts its inputs into ``Block``s on the driver (``plan``), and in
    the workers hands each record of a block to a per-record stage (``block_stage``: a fetcher) or decides the
    block's rows itself (``block_outcomes``: a WARC read in place).
  * ``GlobalStage`` (role ``global``: a threshold over the whole data set, dedupe by key): ``summarize`` computes
    what the decision needs over the whole committed input with Ray Data aggregations (small and JSON-able: a
    quantile, the path of a table of duplicate groups), then ``decide`` marks each batch, in the workers, like a
    batch stage. The data set never reaches the driver. A global stage runs as a segment of its own: the stages
    after it start once it has committed (they may load what it made, e.g. a model).
  * ``SinkStage`` (role ``sink``, the shards): writes kept records in Ray workers, one key range per worker task,
    so its output does not depend on the number of workers (``mmcurate.pipeline.sink``).
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import pyarrow as pa

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import (
    DETAIL_COLUMN,
    FIRST_COLUMN,
    OUTCOME_SCHEMA,
    REASON_COLUMN,
    REJECT_SCHEMA,
    SCORES_TYPE,
    outcome_schema,
    outcome_table,
)
from mmcurate.schemas.stage_configs import STAGE_KINDS, StageConfig

ConfigT = TypeVar("ConfigT", bound=StageConfig)


class InputError(ValueError):
    """A stage's inputs are not what the workflow says (a missing file or column, no candidates at all): the
    workflow's mistake, reported by the CLI as an error, not a traceback."""


@dataclass
class StageContext:
    """Who a stage is and where it may write.

    ``work_dir`` is the stage's uncommitted output (discarded if the run dies). ``progress_dir`` survives a killed
    run and belongs to this exact fingerprint: a stage may record finished pieces of long work there (a crawl's
    BFS levels, fetched chunks) and skip them when it starts again. It is removed once the stage commits."""

    name: str
    config_hash: str
    work_dir: Path
    progress_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mmcurate.stage"))


class Stage(ABC, Generic[ConfigT]):
    def __init__(self, config: ConfigT, name: str | None = None):
        self.config = config
        self.name = name or registered_kind(type(self)) or type(self).__name__


def registered_kind(cls: type) -> str | None:
    """The kind a class is registered as (its ``STAGE_KINDS`` implementation), if any."""
    where = f"{cls.__module__}:{cls.__qualname__}"
    return next((kind for kind, entry in STAGE_KINDS.items() if entry.implementation == where), None)


@dataclass(frozen=True)
class Block:
    """A unit of streamed work and of resume (``mmcurate.pipeline.stream``). ``id`` names the block's outputs in
    every stage and must be the same on every run for the same input; ``path`` is a local parquet file of
    records, or whatever the source reads for this kind of block (a WARC file). ``rows``: its record count where
    known (a committed upstream file's footer), which orders the work largest first."""

    id: str
    path: str
    kind: str
    rows: int | None = None


class SourceStage(Stage[ConfigT]):
    """A stage with no upstream: it cuts its inputs into blocks on the driver (``plan``, small: paths and ids), and
    in the workers either hands each record of a block to a per-record stage (``block_stage``: a fetcher) or
    decides the block's outcome rows itself (``block_outcomes``: an archive read in place)."""

    @abstractmethod
    def plan(self, ctx: StageContext) -> list[Block]:
        """The blocks of this run, in a fixed order; candidate files go under ``ctx.work_dir``."""

    def block_stage(self, block: Block) -> RecordStage | None:
        """The stage that turns each record of ``block`` into outcome rows, or None for ``block_outcomes``."""
        return None

    def block_outcomes(self, block: Block) -> Iterator[pa.Table]:
        """Outcome rows (``OUTCOME_SCHEMA``) of a block the source decides without a per-record stage."""
        raise NotImplementedError(f"{type(self).__name__} has no outcomes for blocks of kind {block.kind}")


_OUTCOME_COLUMNS = (REASON_COLUMN, DETAIL_COLUMN, FIRST_COLUMN)


def record_of(row: dict[str, Any]) -> dict[str, Any]:
    """The record an outcome row carries (with any extension columns), without its outcome columns."""
    return {name: value for name, value in row.items() if name not in _OUTCOME_COLUMNS}


def kept(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An outcome row keeping ``record`` (with any extension columns it carries) with ``changes`` applied."""
    row = record_of(record)
    row.update(changes)
    row[REASON_COLUMN] = None
    row[DETAIL_COLUMN] = None
    row[FIRST_COLUMN] = None
    return row


_CARRIED_MEDIA = ("image", "audio", "subtitles")


def rejected(record: dict[str, Any], reason: Reason | str, detail: str = "", **changes: Any) -> dict[str, Any]:
    """An outcome row rejecting ``record``. Media bytes are dropped: a reject row explains, it does not carry."""
    row = kept(record, **changes)
    row.update(dict.fromkeys(_CARRIED_MEDIA))
    row[REASON_COLUMN] = Reason(reason).value
    row[DETAIL_COLUMN] = detail[:500]
    return row


_logged_traces: set[str] = set()


def internal_error_detail(err: BaseException, key: object = None) -> str:
    """What an ``internal_error`` row says: the exception, the frame it was raised in and a digest of where it
    was raised (file, line, function: the same bug gives the same digest on every record). The full traceback is
    logged once per digest and process."""
    frames = traceback.extract_tb(err.__traceback__)
    where = "|".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in frames)
    digest = hashlib.sha1(f"{type(err).__name__}|{where}".encode()).hexdigest()[:10]
    if digest not in _logged_traces:
        _logged_traces.add(digest)
        logging.getLogger("mmcurate.stage").error(
            "internal error on key %s (trace %s):\n%s", key, digest,
            "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        )
    last = f" at {where.rsplit('|', 1)[-1]}" if where else ""
    return f"{type(err).__name__}: {err}"[:400] + f"{last} [trace {digest}]"


def internal_error(record: dict[str, Any], err: BaseException) -> dict[str, Any]:
    """An ``internal_error`` reject row for a record whose processing raised ``err`` unexpectedly."""
    return rejected(record, Reason.INTERNAL_ERROR, internal_error_detail(err, record.get("key")))


class MapStage(Stage[ConfigT]):
    """Role ``map``: a batch of records in, their outcome rows out (``process_table``). The base owns the loop,
    the counters and the reasons; subclasses fill ``RecordStage.process`` or ``BatchStage.process_batch``."""

    def __init__(self, config: ConfigT, name: str | None = None):
        super().__init__(config, name)
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

    def setup(self) -> None:
        """Load what is expensive (models, lookup tables) once per worker; called before the first batch."""

    @abstractmethod
    def _outcomes(self, table: pa.Table) -> pa.Table:
        """Outcome rows of ``table``'s records, each record's first row marked ``_first``."""

    def process_table(self, table: pa.Table) -> pa.Table:
        """Plain callable over an Arrow batch: what the workers run, and what unit tests call directly."""
        started = time.perf_counter()
        outcomes = self._outcomes(table)
        self.counts.update(reason or "kept" for reason in outcomes[REASON_COLUMN].to_pylist())
        self.seconds += time.perf_counter() - started
        return outcomes


class RecordStage(MapStage[ConfigT]):
    """One record → one or more outcome rows; a subclass only decides, in ``process``."""

    @abstractmethod
    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Return outcome rows (via ``kept``/``rejected``), or raise ``Rejected`` to reject the whole record."""

    def process_record(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The outcome rows of one record, the first marked ``_first``: ``process`` with its rejections and
        unexpected errors turned into rows. Safe to call from several threads at once when ``process`` is."""
        try:
            produced = self.process(record)
        except Rejected as rej:
            produced = [rejected(record, rej.reason, rej.detail)]
        except Exception as err:  # one bad record must not fail the stage: it becomes a reason row
            produced = [internal_error(record, err)]
        if not produced:
            # a record that vanishes without a row would break kept + rejected = in
            raise RuntimeError(f"{type(self).__name__}.process returned no outcome for key {record.get('key')}")
        for i, row in enumerate(produced):
            row[FIRST_COLUMN] = i == 0
        return produced

    def _outcomes(self, table: pa.Table) -> pa.Table:
        rows = [row for record in table.to_pylist() for row in self.process_record(record)]
        return outcome_table(rows, outcome_schema(table.schema))


class BatchStage(MapStage[ConfigT]):
    """A whole Arrow batch → one outcome row per record (``process_batch``, built with ``Decisions``). A batch
    that raises unexpectedly is retried one record at a time, so that only the records that raise become
    ``internal_error`` rows."""

    @abstractmethod
    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Outcome rows for ``batch``, one per record in order: ``Decisions(batch)…outcomes()``."""

    def _outcomes(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return outcome_table([], outcome_schema(table.schema))
        try:
            return self._checked(table, self.process_batch(table))
        except Rejected as rej:  # the stage refuses the batch as a whole: every record gets the reason
            return Decisions(table).reject(None, rej.reason, rej.detail).outcomes()
        except Exception:
            pass  # find the records that raise, one at a time (a one-record batch too: a block's tail)
        parts = []
        for i in range(table.num_rows):
            one = table.slice(i, 1)
            try:
                parts.append(self._checked(one, self.process_batch(one)))
            except Rejected as rej:
                parts.append(Decisions(one).reject(None, rej.reason, rej.detail).outcomes())
            except Exception as err:  # one bad record must not fail the stage: it becomes a reason row
                row = internal_error(one.to_pylist()[0], err)
                row[FIRST_COLUMN] = True
                parts.append(outcome_table([row], outcome_schema(one.schema)))
        return pa.concat_tables(parts, promote_options="permissive")

    def _checked(self, batch: pa.Table, outcomes: pa.Table) -> pa.Table:
        if outcomes.num_rows != batch.num_rows or outcomes["key"] != batch["key"]:
            raise RuntimeError(f"{type(self).__name__}.process_batch must return one outcome row per record, in order "
                               f"({batch.num_rows} records, {outcomes.num_rows} rows)")
        return outcomes


class Decisions:
    """The outcome rows of a batch stage, one per record: every record kept unless ``reject`` marks it (the first
    reason given to a record is its reason), with columns set and scores added on the way."""

    def __init__(self, batch: pa.Table):
        self.batch = batch
        self._reason = pa.nulls(batch.num_rows, pa.string())
        self._detail = pa.nulls(batch.num_rows, pa.string())
        self._columns: dict[str, pa.Array] = {}
        self._scores: dict[str, pa.Array] = {}

    def reject(self, mask: Any, reason: Reason | str, detail: str | Any = "") -> Decisions:
        """Reject the records where ``mask`` (booleans, one per record; None: all) is true, with ``reason`` and
        ``detail`` (one string for all, or one per record) unless they were rejected already."""
        import pyarrow.compute as pc

        n = self.batch.num_rows
        mask = pa.array([True] * n) if mask is None else pa.array(mask, pa.bool_())
        new = pc.and_(pc.fill_null(mask, False), pc.is_null(self._reason))
        details = pa.array([str(detail)[:500]] * n if isinstance(detail, str) else [None if d is None else str(d)[:500]
                                                                                   for d in detail], pa.string())
        self._reason = pc.if_else(new, pa.scalar(Reason(reason).value), self._reason)
        self._detail = pc.if_else(new, details, self._detail)
        return self

    def set(self, column: str, values: Any, type: pa.DataType | None = None) -> Decisions:
        """Set a column for every record (a record column, or an extension column with its Arrow type)."""
        from mmcurate.schemas.record import EXTENSION_COLUMNS, RECORD_COLUMNS

        if column not in RECORD_COLUMNS and column not in EXTENSION_COLUMNS:
            # an outcome keeps record and extension columns only: a misspelt name would vanish without a word
            raise KeyError(f"{column!r} is neither a record column nor an extension column "
                           f"({', '.join(sorted(EXTENSION_COLUMNS))})")
        self._columns[column] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type)
        return self

    def add_scores(self, name: str, values: Any) -> Decisions:
        """Add score ``name`` (``<stage>.<model>.<what>``) for every record; a null value adds no entry."""
        self._scores[name] = pa.array(values, pa.float64())
        return self

    @property
    def rejected(self) -> pa.Array:
        import pyarrow.compute as pc

        return pc.is_valid(self._reason)

    def outcomes(self) -> pa.Table:
        import pyarrow.compute as pc

        table = self.batch
        for name, values in self._columns.items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values.cast(table.schema.field(name).type))
            else:
                table = table.append_column(name, values)
        if self._scores:
            table = table.set_column(table.column_names.index("scores"), "scores", self._merged_scores(table["scores"]))
        is_rejected = self.rejected
        for name in _CARRIED_MEDIA:
            if name in table.column_names:
                column = table[name]
                table = table.set_column(table.column_names.index(name), name,
                                         pc.if_else(is_rejected, pa.nulls(len(column), column.type), column))
        table = table.append_column(REASON_COLUMN, self._reason).append_column(DETAIL_COLUMN, self._detail)
        table = table.append_column(FIRST_COLUMN, pa.array([True] * table.num_rows, pa.bool_()))
        return table.select(outcome_schema(table.schema).names).cast(outcome_schema(table.schema))

    def _merged_scores(self, existing: Any) -> pa.Array:
        added = {name: values.to_pylist() for name, values in self._scores.items()}
        merged = []
        for i, pairs in enumerate(existing.to_pylist()):
            entry = dict(pairs or [])
            entry.update({name: values[i] for name, values in added.items() if values[i] is not None})
            merged.append(sorted(entry.items()))
        return pa.array(merged, SCORES_TYPE)


class GlobalStage(BatchStage[ConfigT]):
    """Role ``global``: a decision over the whole committed input. ``summarize`` runs on the driver over a Ray
    Dataset of the upstream's records and returns what ``decide`` needs (JSON-able: it is kept in the run's
    progress so a killed run does not recompute it); ``decide`` then marks each batch in the workers."""

    summary: dict[str, Any] | None = None

    @abstractmethod
    def summarize(self, dataset: Any, ctx: StageContext) -> dict[str, Any]:
        """What the decision needs, from Ray Data aggregations over ``dataset``; never the records themselves.
        Files the stage makes besides rows (a trained model) go under ``ctx.progress_dir / "artifacts"`` and are
        published with the stage as ``DIR/<stage>/artifacts/``."""

    @abstractmethod
    def decide(self, batch: pa.Table, summary: dict[str, Any]) -> pa.Table:
        """Outcome rows of ``batch`` given the summary (``Decisions``)."""

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.summary is None:
            raise RuntimeError(f"{type(self).__name__}: decide called before summarize")
        return self.decide(batch, self.summary)


class SinkStage(Stage[ConfigT]):
    """Role ``sink``: writes kept records in Ray workers, a key range per task (``mmcurate.pipeline.sink``)."""

    @abstractmethod
    def write_partition(self, records: pa.Table, out_dir: Path, prefix: str) -> tuple[list[Any], list[dict[str, Any]]]:
        """Write one key range's records under ``out_dir`` as ``<prefix>-NNNNNN`` files, in key order; return
        what was written and the outcome rows of records that could not be."""

    @abstractmethod
    def partitions(self, rows: int) -> int:
        """Key ranges to cut ``rows`` records into; a function of the row count and the config alone, so that
        the output does not depend on the number of workers."""


def on_actors(
    dataset: Any, worker: type, args: tuple[Any, ...], configs: list[StageConfig], *, tasks: int,
    batch_size: int = 1,
) -> Any:
    """``dataset.map_batches`` over Arrow batches on one fixed pool of ``worker`` actors, each built once: as many
    actors as the stages' ``concurrency`` asks, no more than ``tasks`` and than the cluster can place; each
    reserves the largest ``num_cpus``/``num_gpus`` of ``configs``. One task per actor at a time: no task waits in
    a busy actor's queue while another actor idles, and a kill finds at most one task in flight per actor. (An
    elastic pool never grows past one actor here: it scales on queued tasks, and there are none.)"""
    import ray

    num_cpus = max(c.num_cpus for c in configs)
    num_gpus = max(c.num_gpus for c in configs)
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // num_cpus)
    if fits < 1:  # an actor no node can place would wait for ever
        raise RuntimeError(f"the stage asks {num_cpus} CPUs per worker; the cluster has {resources.get('CPU', 0)}")
    if num_gpus:
        fits = min(fits, int(resources.get("GPU", 0) // num_gpus))
        if fits < 1:
            raise RuntimeError(f"the stage asks {num_gpus} GPU per worker; the cluster has {resources.get('GPU', 0)}")
    size = max(1, min(max(c.concurrency for c in configs), tasks, fits))
    return dataset.map_batches(
        worker,
        fn_constructor_args=args,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


def reject_rows(outcomes: pa.Table, stage: str, config_hash: str) -> pa.Table:
    """Rejected outcome rows as the run directory keeps them (``REJECT_SCHEMA``): who, why, which stage and config."""
    n = outcomes.num_rows
    return pa.table(
        {
            "key": outcomes["key"],
            "parent": outcomes["parent"],
            "url": outcomes["url"],
            "page_url": outcomes["page_url"],
            "stage": pa.array([stage] * n, pa.string()),
            "reason": outcomes[REASON_COLUMN],
            "detail": outcomes[DETAIL_COLUMN],
            "config_hash": pa.array([config_hash] * n, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def split_outcomes(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(kept records, rejected outcome rows) of an outcome batch."""
    import pyarrow.compute as pc

    is_kept = pc.is_null(table[REASON_COLUMN])
    return (
        table.filter(is_kept).drop_columns([REASON_COLUMN, DETAIL_COLUMN, FIRST_COLUMN]),
        table.filter(pc.invert(is_kept)),
    )


__all__ = [
    "OUTCOME_SCHEMA",
    "BatchStage",
    "Block",
    "Decisions",
    "GlobalStage",
    "InputError",
    "MapStage",
    "RecordStage",
    "SinkStage",
    "SourceStage",
    "Stage",
    "StageContext",
    "internal_error",
    "internal_error_detail",
    "kept",
    "on_actors",
    "reject_rows",
    "rejected",
    "split_outcomes",
]
