"""The stage contract.

A stage turns records (``mmcurate.schemas.record.RECORD_SCHEMA``) into *outcome rows*: the same columns plus
``_reason``/``_detail``/``_first``. A null reason means kept; anything else is a reject. Every candidate a stage
considers yields at least one outcome row, which is what lets the runner prove kept + rejected = out, and
in = the upstream's committed rows, for every stage.

Roles, one base class each:
  * ``RecordStage`` (role ``map``): one record in, one or more outcome rows out. Subclasses fill ``process``;
    ``setup`` loads models once per Ray worker. The base (``process_record``) marks each record's first outcome
    row (``_first``), so the runner can count the records that entered, and turns an unexpected exception on one
    record into an ``internal_error`` reject row (type, message, a digest of the traceback) instead of a failed
    stage. Consecutive map stages are streamed together with the source before them
    (``mmcurate.pipeline.stream``): in each worker a record goes through all of them in one thread, and
    ``config.threads`` records are in hand at once.
  * ``SourceStage`` (role ``source``, the crawl): cuts its inputs into ``Block``s on the driver (``plan``), and in
    the workers hands each record of a block to a per-record stage (``block_stage``: a fetcher) or decides the
    block's rows itself (``block_outcomes``: a WARC read in place).
  * a ``global`` stage (a threshold over the whole data set, dedupe by hash key) computes what it needs with Ray
    Data aggregations and never pulls the data set to the driver; it ends a streamed segment.
  * the ``sink`` (shard) writes kept records in Ray workers, one key range per worker task
    (``mmcurate.pipeline.sink``).
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
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import (
    DETAIL_COLUMN,
    FIRST_COLUMN,
    OUTCOME_SCHEMA,
    REASON_COLUMN,
    RECORD_COLUMNS,
    REJECT_SCHEMA,
    outcome_table,
)
from mmcurate.schemas.stage_configs import StageConfig

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
    kind: ClassVar[str]

    def __init__(self, config: ConfigT, name: str | None = None):
        self.config = config
        self.name = name or self.kind


@dataclass(frozen=True)
class Block:
    """A unit of streamed work and of resume (``mmcurate.pipeline.stream``). ``id`` names the block's outputs in
    every stage and must be the same on every run for the same input; ``path`` is a local parquet file of
    records, or whatever the source reads for this kind of block (a WARC file)."""

    id: str
    path: str
    kind: str


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


def kept(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An outcome row keeping ``record`` with ``changes`` applied."""
    row = {name: record.get(name) for name in RECORD_COLUMNS}
    row.update(changes)
    row[REASON_COLUMN] = None
    row[DETAIL_COLUMN] = None
    row[FIRST_COLUMN] = None
    return row


def rejected(record: dict[str, Any], reason: Reason | str, detail: str = "", **changes: Any) -> dict[str, Any]:
    """An outcome row rejecting ``record``. Media bytes are dropped: a reject row explains, it does not carry."""
    row = kept(record, **changes)
    row.update(image=None, audio=None, subtitles=None)
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


class RecordStage(Stage[ConfigT]):
    """One record → one or more outcome rows. The base owns the loop, the counters and the reasons; a subclass
    only decides, in ``process``."""

    def setup(self) -> None:
        """Load what is expensive (models, lookup tables) once per worker; called before the first batch."""

    @abstractmethod
    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Return outcome rows (via ``kept``/``rejected``), or raise ``Rejected`` to reject the whole record."""

    def __init__(self, config: ConfigT, name: str | None = None):
        super().__init__(config, name)
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

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

    def process_table(self, table: pa.Table) -> pa.Table:
        """Plain callable over an Arrow batch: what Ray runs, and what unit tests call directly."""
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []
        for record in table.to_pylist():
            produced = self.process_record(record)
            for row in produced:
                self.counts[row[REASON_COLUMN] or "kept"] += 1
            rows.extend(produced)
        self.seconds += time.perf_counter() - started
        return outcome_table(rows)

    # CPUs one worker reserves; network-bound stages ask for less so that more of them overlap their waits
    num_cpus: ClassVar[float] = 1.0


def on_actor_pool(
    dataset: Any, worker: type, args: tuple[Any, ...], *, batch_size: int, concurrency: int, num_cpus: float
) -> Any:
    """``dataset.map_batches`` over Arrow batches on an elastic pool of ``worker`` actors, built once each."""
    import ray

    return dataset.map_batches(
        worker,
        fn_constructor_args=args,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency),
        num_cpus=num_cpus,
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
    "Block",
    "InputError",
    "RecordStage",
    "SourceStage",
    "Stage",
    "StageContext",
    "internal_error",
    "internal_error_detail",
    "kept",
    "on_actor_pool",
    "reject_rows",
    "rejected",
    "split_outcomes",
]
