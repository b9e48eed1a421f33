"""Streamed execution: consecutive stages that need no global view of their input run as one Ray Data pipeline.

A *segment* is a source or a committed upstream followed by ``map`` stages, or a ``global`` stage's decision alone. Its input is a list of blocks
(``stages.base.Block``: a URL-list chunk, a chunk of page media references, a WARC file, a committed data file),
each named by an id that is stable across runs. One long-lived pool of actors takes the blocks; in each actor a
block's records run through every stage of the segment, record by record, in a pool of threads (a record is
fetched and then aligned in the same thread, as img2dataset downloads and resizes in one); a batch stage (a
model) takes the window's records as one Arrow batch. Every stage still
writes its own outcome: per block and stage, the kept records, the reject rows and the counts go to

    DIR/.progress/<stage>-<fingerprint>/blocks/<block id>/{data.parquet, rejects.parquet, counts.json}

written under a temporary name and renamed whole, by the worker. A block whose directory exists is never done
again, so a killed run loses at most the blocks in flight; the driver sees one small counts row per block and
stage. Committing a stage moves its block files into the stage's generation (``commit_blocks``).
On a remote run directory (``pipeline.storage``) the worker writes the block's files in a local temporary
directory, uploads them and then ``_DONE``; committing links them by server-side copy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.pipeline.storage import is_url, join, local_copy, storage_for
from mmcurate.schemas.record import (
    FIRST_COLUMN,
    REASON_COLUMN,
    REJECT_SCHEMA,
    TALLY_COLUMNS,
    outcome_schema,
    outcome_table,
    record_schema,
)
from mmcurate.schemas.stage_configs import STAGE_KINDS
from mmcurate.stages.base import (
    Block,
    GlobalStage,
    RecordStage,
    on_actors,
    record_of,
    registered_kind,
    reject_rows,
    split_outcomes,
)

COUNTS = "counts.json"
COUNT_SCHEMA = pa.schema([pa.field("block", pa.string()), pa.field("stage", pa.int32()), pa.field("counts", pa.string())])


@dataclass(frozen=True)
class StageRun:
    """One stage of a segment as the workers need it: how to build it, and where its block outputs go."""

    cls: type
    config: Any
    name: str
    config_hash: str
    blocks_dir: str  # DIR/.progress/<stage>-<fp>/blocks (a local path or a URL)
    guard: Any = None  # rundir.RunGuard: a block is published only while the run that handed it out is alive
    summary: dict[str, Any] | None = None  # a global stage's summary (what ``decide`` needs)

    def done(self, block_id: str) -> bool:
        return storage_for(self.blocks_dir).published(join(self.blocks_dir, block_id))


def block_dir(run: StageRun, block_id: str) -> Path | str:
    return join(run.blocks_dir, block_id) if is_url(run.blocks_dir) else Path(run.blocks_dir) / block_id


class RunGone(RuntimeError):
    """The run that handed a worker its block no longer holds the run directory."""


class _BlockWriter:
    """One stage's outcome of one block, written under a temporary name and published by one rename."""

    def __init__(self, run: StageRun, block_id: str):
        self.run = run
        self.final = str(block_dir(run, block_id))
        self.store = storage_for(self.final)
        self.tmp = self.store.staging(self.final)  # local: .<block>.tmp-<id> beside it; remote: a local temp dir
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.counts: Counter[str] = Counter()
        # the schemas.record.TALLY_COLUMNS this stage adds (a later stage carries them, and counts nothing)
        kind = STAGE_KINDS.get(registered_kind(run.cls) or "")
        self.tallied = [name for name in TALLY_COLUMNS if kind is not None and name in kind.adds_columns]
        self.tallies: dict[str, Counter[str]] = {}
        self.entered = self.rows = 0

    def _write(self, name: str, table: pa.Table, schema: pa.Schema) -> None:
        if table.num_rows == 0:
            return
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(str(self.tmp / name), schema)
        self.writers[name].write_table(table)

    def add(self, outcomes: pa.Table, is_source: bool) -> pa.Table:
        """Record a batch of outcome rows; return its kept records (what the next stage reads)."""
        self.rows += outcomes.num_rows
        self.entered += outcomes.num_rows if is_source else sum(bool(f) for f in outcomes[FIRST_COLUMN].to_pylist())
        self.counts.update(reason or "kept" for reason in outcomes[REASON_COLUMN].to_pylist())
        for name in self.tallied:
            if name in outcomes.column_names:
                tally = self.tallies.setdefault(name, Counter())
                for pairs in outcomes[name].to_pylist():
                    tally.update(dict(pairs or []))
        records, refused = split_outcomes(outcomes)
        self._write("data.parquet", records, record_schema(records.schema))
        self._write("rejects.parquet", reject_rows(refused, self.run.name, self.run.config_hash), REJECT_SCHEMA)
        return records

    def counts_row(self) -> dict[str, Any]:
        counts = Counter(self.counts)
        kept = counts.pop("kept", 0)
        row = {"in": self.entered, "out": self.rows, "kept": kept, "rejected": dict(sorted(counts.items()))}
        return row | {name: dict(sorted(tally.items())) for name, tally in self.tallies.items()}

    def publish(self) -> dict[str, Any]:
        for writer in self.writers.values():
            writer.close()
        row = self.counts_row()
        (self.tmp / COUNTS).write_text(json.dumps(row, sort_keys=True))
        if self.run.guard is not None and not self.run.guard.alive():
            # a worker outliving a killed run: what it fetched after the kill may be failures the kill caused
            raise RunGone(f"block {self.final}: the run that started it is gone; not publishing it")
        self.store.publish(self.tmp, self.final)  # local: fsync + one rename; remote: the files, then _DONE
        return row

    def abandon(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.store.abandon(self.tmp)


class SegmentWorker:
    """The Ray actor of a segment: builds every stage once (``setup``: models load once per worker), then runs
    blocks. ``runs[0]`` is the source when ``source`` is set; the other stages are ``RecordStage``s."""

    def __init__(self, runs: list[StageRun], source: bool, threads: int, window: int | None = None):
        self.runs = runs
        self.source = source
        self.stages = [run.cls(run.config, run.name) for run in runs]
        for run, stage in zip(runs, self.stages):
            if isinstance(stage, GlobalStage):
                stage.summary = run.summary
        for stage in self.stages[1 if source else 0 :]:
            stage.setup()
        self.fetchers: dict[str, RecordStage] = {}  # the source's per-record stage for each kind of block
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mmcurate-record")
        # records in hand at once: bounds memory, keeps the threads busy, fills a batch stage's batch
        batched = [run.config.batch_size for run, stage in zip(runs, self.stages) if not isinstance(stage, RecordStage)]
        self.window = window or max(8, threads * 2, *batched)

    def _fetcher(self, block: Block) -> RecordStage | None:
        """The source's per-record stage for this kind of block (built and set up once), or None when the source
        decides the block's rows itself (``block_outcomes``)."""
        if block.kind not in self.fetchers:
            fetcher = self.stages[0].block_stage(block)
            if fetcher is not None:
                fetcher.setup()
            self.fetchers[block.kind] = fetcher
        return self.fetchers[block.kind]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for item in batch.to_pylist():
            block = Block(id=item["id"], path=item["path"], kind=item["kind"])
            for index, counts in self.run_block(block):
                rows.append({"block": block.id, "stage": index, "counts": json.dumps(counts, sort_keys=True)})
        return pa.Table.from_pylist(rows, schema=COUNT_SCHEMA)

    def run_block(self, block: Block) -> list[tuple[int, dict[str, Any]]]:
        """Run ``block`` through the stages that have not done it yet; return (stage index, counts) per stage."""
        start = next((i for i, run in enumerate(self.runs) if not run.done(block.id)), len(self.runs))
        if start == len(self.runs):
            return []
        writers = [_BlockWriter(run, block.id) for run in self.runs[start:]]
        try:
            for decided, batch in self._input(block, start):
                first = start
                if decided:  # the source's own outcome rows for this batch
                    batch = writers[0].add(batch, is_source=True)
                    first = start + 1
                self._through(block, batch, first, writers[first - start :])
            return [(start + i, writer.publish()) for i, writer in enumerate(writers)]
        except BaseException:
            for writer in writers:
                writer.abandon()
            raise

    def _input(self, block: Block, start: int) -> Iterator[tuple[bool, pa.Table]]:
        """Batches entering the segment at stage ``start``: (True if they are already stage ``start``'s outcome
        rows, table)."""
        if start > 0:  # an earlier stage finished this block before a kill: read what it kept
            path = join(block_dir(self.runs[start - 1], block.id), "data.parquet")
            if storage_for(path).exists(path):
                yield from ((False, b) for b in _batches(path, self.window))
            return
        if self.source and self._fetcher(block) is None:
            with local_copy(block.path) as path:  # the source reads its own kind of file: give it a local one
                yield from ((True, t) for t in self.stages[0].block_outcomes(Block(block.id, path, block.kind)))
            return
        yield from ((False, b) for b in _batches(block.path, self.window))

    def _through(self, block: Block, records: pa.Table, first: int, writers: list[_BlockWriter]) -> None:
        """Records through stages ``first``..; each stage's outcome rows go to its own writer, in input order.
        Consecutive record stages run in the thread pool, each record through all of them in one thread; a batch
        stage takes the kept records of the stage before it as one batch."""
        if not writers or records.num_rows == 0:
            return
        chain = [self._fetcher(block) if (i == 0 and self.source) else self.stages[i] for i in range(first, len(self.runs))]
        is_source = [first + i == 0 and self.source for i in range(len(chain))]
        i = 0
        while i < len(chain) and records.num_rows:
            if not isinstance(chain[i], RecordStage):
                records = writers[i].add(chain[i].process_table(records), is_source=is_source[i])
                i += 1
                continue
            j = i
            while j < len(chain) and isinstance(chain[j], RecordStage):
                j += 1
            per_record = list(self.pool.map(lambda r: _run_chain(chain[i:j], r), records.to_pylist()))
            schema = outcome_schema(records.schema)
            for offset in range(j - i):
                outcomes = outcome_table([row for produced in per_record for row in produced[offset]], schema)
                records = writers[i + offset].add(outcomes, is_source=is_source[i + offset])
            i = j


def _run_chain(chain: list[RecordStage], record: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """One record through every stage of the chain: the outcome rows each stage gave (a stage sees the kept rows
    of the one before it)."""
    produced: list[list[dict[str, Any]]] = []
    current = [record]
    for stage in chain:
        rows = [row for r in current for row in stage.process_record(r)]
        produced.append(rows)
        current = [record_of(row) for row in rows if row[REASON_COLUMN] is None]
    return produced


def _batches(path: Path | str, rows: int) -> Iterator[pa.Table]:
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(storage_for(path).open(str(path))) if is_url(path) else str(path)
        parquet = pq.ParquetFile(source)
        for batch in parquet.iter_batches(batch_size=rows):
            yield pa.Table.from_batches([batch])


def shared_blocks(blocks: list[Block], scratch: Path, inputs: str) -> list[Block]:
    """Blocks whose file the driver wrote under ``scratch`` (candidate chunks), uploaded to ``inputs`` when that
    is remote (Ray workers may run on other nodes), named by block id; other blocks unchanged."""
    if not is_url(inputs):
        return blocks
    store = storage_for(inputs)
    moved, pairs = [], []
    for block in blocks:
        if Path(block.path).is_relative_to(scratch):
            target = join(inputs, f"{block.id}.parquet")
            pairs.append((Path(block.path), target))
            block = Block(block.id, target, block.kind)
        moved.append(block)
    store.upload(pairs)
    return moved


# --- the driver's side: schedule the blocks, then gather each stage's block files for its commit


def pending_blocks(blocks: list[Block], done: set[str]) -> list[Block]:
    """The blocks not yet done, largest first (known for committed upstream files; a source's blocks keep their
    order): the pool's last block is then a small one, not a 500-record block one actor works through while the
    others idle."""
    return sorted((b for b in blocks if b.id not in done), key=lambda b: -(b.rows or 0))


def run_blocks(runs: list[StageRun], blocks: list[Block], *, source: bool, log: Any) -> None:
    """Run every block not yet done by the segment's last stage on one pool of actors. The driver receives one
    small counts row per block and stage; the data never passes through it."""
    import ray

    done = set(storage_for(runs[-1].blocks_dir).published_children(runs[-1].blocks_dir))  # one listing
    pending = pending_blocks(blocks, done)
    log.info("segment %s: %d blocks, %d done by an earlier run", "+".join(r.name for r in runs), len(blocks),
             len(blocks) - len(pending))
    if not pending:
        return
    configs = [r.config for r in runs]
    items = [{"id": b.id, "path": b.path, "kind": b.kind} for b in pending]
    results = on_actors(ray.data.from_items(items, override_num_blocks=len(items)), SegmentWorker,
                        (runs, source, max(c.threads for c in configs)), configs, tasks=len(items))
    finished = 0
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        finished += len(set(batch["block"].to_pylist()))
        log.info("segment: %d/%d blocks done", finished, len(pending))


def block_counts(run: StageRun, blocks: list[Block]) -> dict[str, Any]:
    """The stage's counts summed over its blocks (each block's counts.json)."""
    total: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    tallies: dict[str, Counter[str]] = {}
    bodies = storage_for(run.blocks_dir).read_many([join(block_dir(run, b.id), COUNTS) for b in blocks])
    for body in bodies:
        counts = json.loads(body)
        total.update({k: counts[k] for k in ("in", "out", "kept")})
        rejected.update(counts["rejected"])
        for name in TALLY_COLUMNS:
            if name in counts:
                tallies.setdefault(name, Counter()).update(counts[name])
    stats = {"in": total["in"], "out": total["out"], "kept": total["kept"], "rejected": dict(sorted(rejected.items()))}
    return stats | {name: dict(sorted(tally.items())) for name, tally in tallies.items()}


def link_blocks(run: StageRun, blocks: list[Block], work: Path | str) -> None:
    """Link the stage's block files into its generation directory: ``data/<block>.parquet``,
    ``rejects/<block>.parquet``. Hard links: the bytes were written once, by the workers, and the block files stay
    in ``.progress`` (a kill before the commit must still find every finished block) until the commit removes it.
    Remote: server-side copies into the generation's prefix."""
    work = str(work)
    if not is_url(work):
        os.makedirs(os.path.join(work, "data"), exist_ok=True)
        os.makedirs(os.path.join(work, "rejects"), exist_ok=True)
    present = set(storage_for(run.blocks_dir).files(run.blocks_dir))  # one listing, not a look-up per file
    pairs = [(join(block_dir(run, block.id), name), join(work, folder, f"{block.id}.parquet"))
             for block in blocks for name, folder in (("data.parquet", "data"), ("rejects.parquet", "rejects"))
             if f"{block.id}/{name}" in present]
    storage_for(work).link_many(pairs)
