"""``retain_raw_text: false``: once the ``pii`` stage has committed, no raw text is left in the run directory.

The stages before ``pii`` necessarily hold the text as crawled: their records (``caption``, ``alt``, ``title``,
``figcaption``, ``transcript``, ``text``, the raw ``subtitles``), the crawl's page table (``pages/``: each page's
media references with their alt and caption text), and reject details that may quote it. At the end of a run whose
``pii`` stage is committed, each of those stages gets a new generation (``purged``) with the same fingerprint:
text columns nulled, text keys of the page table's references dropped, reject details rewritten by the ``pii``
stage's own analyzer and operators; it is published by the ordinary commit (one rename), marked
``"raw_text_purged": true``, and the old generation deleted. The run log is rewritten the same way. The stages
after ``pii`` only ever saw redacted text.

The cost: a purged stage is no longer an input anything can run on. When a later run must run a stage whose
upstream is purged (the ``pii`` config changed, or anything after it whose inputs are gone), every purged stage is
invalidated first, so the run starts again from the crawl (``before_run``). A run killed between the ``pii``
commit and the end of the run leaves raw text until the next run of the directory ends.

Not covered: the demo's served site, which is the crawl's *source*, not its output (``serve.demo_site.root``
builds it outside the run directory).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.pipeline.rundir import RunDir
from mmcurate.schemas.record import TEXT_FIELDS
from mmcurate.schemas.stage_configs import STAGE_KINDS

log = logging.getLogger("mmcurate.run")

RAW_TEXT_COLUMNS = (*TEXT_FIELDS, "text", "subtitles")
PURGED = "raw_text_purged"
REDACTED_CAPABILITY = "pii_redacted"  # what the pii stage's registration provides


def redacting_index(stages: list[Any]) -> int | None:
    """Position of the first stage that redacts text (provides ``pii_redacted``), or None."""
    for i, spec in enumerate(stages):
        if REDACTED_CAPABILITY in STAGE_KINDS[spec.kind].provides:
            return i
    return None


class Purge:
    """Built before a run's stages (invalidates purged stages a pending stage would read: ``before_run``);
    ``run()`` after them purges raw text from the stages before ``pii`` (``purge``)."""

    def __init__(self, workflow: Any, planned: list[Any], rundir: RunDir):
        self.planned, self.rundir = planned, rundir
        self.at = redacting_index([step.spec for step in planned])
        self.wanted = not workflow.retain_raw_text and self.at is not None
        if not workflow.retain_raw_text and self.at is None:
            log.warning("retain_raw_text is false but the workflow has no pii stage: nothing is redacted or purged")
        if self.wanted:
            before_run(planned, rundir)

    def run(self) -> None:
        if self.wanted:
            purge(self.planned, self.at, self.rundir)


def before_run(planned: list[Any], rundir: RunDir) -> None:
    """If the first stage that must run reads from a purged stage, or comes after one, invalidate every purged
    stage: they re-run from the crawl."""
    pending = next((i for i, step in enumerate(planned) if not rundir.is_done(step.spec.name, step.fingerprint)),
                   None)
    if pending is None:
        return
    purged = [step.spec.name for step in planned[:pending] if (rundir.marker(step.spec.name) or {}).get(PURGED)]
    if purged:
        log.info("stages %s hold no raw text (retain_raw_text: false) and %s must run: running from the crawl",
                 purged, planned[pending].spec.name)
        for name in purged:
            rundir.invalidate(name)


def purge(planned: list[Any], at: int, rundir: RunDir) -> None:
    """Raw text out of every stage before ``planned[at]`` (the pii stage, committed) and out of the run log."""
    pii = planned[at]
    if not rundir.is_done(pii.spec.name, pii.fingerprint):
        return
    redact = _redactor(pii.spec.config)
    for step in planned[:at]:
        marker = rundir.marker(step.spec.name)
        if marker is None or marker.get(PURGED) or not rundir.is_done(step.spec.name, step.fingerprint):
            continue
        _purge_stage(rundir, step, marker, redact)
    _purge_log(rundir, redact)


def _redactor(config: Any):
    """A function redacting a list of strings with the pii stage's analyzer and operators (drop: replaced)."""
    from mmcurate.stages.pii.analyzer import PiiAnalyzer
    from mmcurate.stages.pii.redact import Redactor

    analyzer = PiiAnalyzer(config)
    redactor = Redactor(config)

    def redact(texts: list[str | None]) -> list[str | None]:
        present = sorted({t for t in texts if t})
        done = {t: redactor.redact(t, f) for t, f in zip(present, analyzer.analyze(present))}
        return [done.get(t, t) if t else t for t in texts]

    return redact


def _purged_table(table: pa.Table, redact) -> pa.Table:
    for name in RAW_TEXT_COLUMNS:
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, table.schema.field(name), pa.nulls(table.num_rows, table.schema.field(name).type))
    if "detail" in table.column_names:
        i = table.column_names.index("detail")
        table = table.set_column(i, "detail", pa.array(redact(table["detail"].to_pylist()), pa.string()))
    if "refs" in table.column_names:  # the crawl's page table: JSON media references with their text
        i = table.column_names.index("refs")
        table = table.set_column(i, "refs", pa.array([_purged_refs(v) for v in table["refs"].to_pylist()], pa.string()))
    return table


def _purged_refs(value: str | None) -> str | None:
    if not value:
        return value
    refs = json.loads(value)
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, dict):
            for key in RAW_TEXT_COLUMNS:
                if key in ref:
                    ref[key] = None
    return json.dumps(refs, sort_keys=True)


def _purge_stage(rundir: RunDir, step: Any, marker: dict[str, Any], redact) -> None:
    """A new generation of the stage, its parquet files purged and the rest as they were, committed as any
    generation is (local: one rename of the link; remote: the pointer PUT last)."""
    import io

    from mmcurate.pipeline.storage import join

    name = step.spec.name
    source = str(rundir.current_generation(name))
    work = rundir.begin_stage(name, step.fingerprint)
    for relative in sorted(rundir.store.files(source)):
        if relative == "_SUCCESS.json":
            continue
        target = work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        location = join(source, relative)
        if relative.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(rundir.store.read_bytes(location)))
            pq.write_table(_purged_table(table, redact), target)
        elif rundir.store.local:
            try:
                os.link(location, target)
            except OSError:
                shutil.copy2(location, target)
        else:
            target.write_bytes(rundir.store.read_bytes(location))
    kept = {k: v for k, v in marker.items() if k != "files"}
    rundir.commit_stage(name, work, {**kept, PURGED: True})
    log.info("stage %s: raw text purged (retain_raw_text: false)", name)


_LOG_HEAD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.-]+: )")


def _purge_log(rundir: RunDir, redact) -> None:
    path = rundir.logs_dir / "run.log"
    if not path.is_file():
        return
    handlers = [h for h in logging.getLogger("mmcurate").handlers
                if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == os.path.abspath(path)]
    for handler in handlers:
        handler.acquire()
    try:
        for handler in handlers:  # reopened on its next record, after the rename
            if handler.stream is not None:
                handler.stream.close()
                handler.stream = None
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        # the record's header (time, level, logger) is ours and looks like a phone number to libphonenumber
        heads = [m.group(1) if (m := _LOG_HEAD.match(line)) else "" for line in lines]
        bodies = redact([line[len(head):] for line, head in zip(lines, heads)])
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(head + body for head, body in zip(heads, bodies)), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        for handler in handlers:
            handler.release()
