"""``retain_raw_text: false``: once the ``pii`` stage has committed, no raw text is left in the run directory.

The stages before ``pii`` necessarily hold the text as crawled: their records (``caption``, ``alt``, ``title``,
``figcaption``, ``transcript``, ``text``, the raw ``subtitles``), the crawl's page table (``pages/``: each page's
media references with their alt and caption text), and reject details that may quote it. At the end of a run whose
``pii`` stage is committed, each of those stages gets a new generation (``purged``) with the same fingerprint:
text columns nulled, text keys of the page table's references dropped, reject details rewritten by the ``pii``
stage's own analyzer and operators; it is published by the ordinary commit (one rename), marked
``"raw_text_purged": true``, and the old generation deleted. The run log is rewritten the same way. The stages
after ``pii`` only ever saw redacted text.

The cost: a purged stage is no longer an input anything can run on. When a stage that must run (its config
changed, or the ``pii`` config, or a file of it is gone) reads a purged stage, every purged stage runs again
first, so the run starts again from the crawl (``purged_to_rerun``); this holds whatever the workflow's
``retain_raw_text`` says now. Nothing is removed ahead of that: each purged stage keeps its link until its new
generation replaces it at its commit. ``mmcurate plan`` shows the same (``run``, with why), and ``--only NODE``
whose input must run again exits 3 naming it and changes nothing. A run killed between the ``pii`` commit and the
end of the run leaves raw text until the next run of the directory ends.

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
    """Built before a run's stages: ``rerun``, the purged stages this run must run again (``purged_to_rerun``);
    ``run()`` after the stages purges raw text from the stages before ``pii`` (``purge``)."""

    def __init__(self, workflow: Any, planned: list[Any], rundir: RunDir):
        self.planned, self.rundir = planned, rundir
        self.at = redacting_index([step.spec for step in planned])
        self.wanted = not workflow.retain_raw_text and self.at is not None
        if not workflow.retain_raw_text and self.at is None:
            log.warning("retain_raw_text is false but the workflow has no pii stage: nothing is redacted or purged")
        self.rerun = purged_to_rerun(planned, rundir)
        if self.rerun:
            log.info("stages %s hold no raw text (purged): %s", sorted(self.rerun), next(iter(self.rerun.values())))

    def run(self) -> None:
        if self.wanted:
            purge(self.planned, self.at, self.rundir)


def purged_to_rerun(planned: list[Any], rundir: RunDir) -> dict[str, str]:
    """The purged stages, committed under their current fingerprints, that must run again anyway, each with why:
    all of them once a stage that must run (not committed under its fingerprint) reads a purged one through its
    inputs; none otherwise (a branch after ``pii`` reads redacted records and runs without a re-crawl). The
    runner runs them (``--only``: refuses a node reading one) and ``mmcurate plan`` shows them, both from here."""
    purged = [step for step in planned if (rundir.marker(step.spec.name) or {}).get(PURGED)]
    names = {step.spec.name for step in purged}
    reader = next((step for step in planned if set(step.spec.inputs) & names
                   and not rundir.is_done(step.spec.name, step.fingerprint)), None)
    if reader is None:
        return {}
    why = f"its raw text was purged (retain_raw_text: false) and {reader.spec.name!r}, which must run,"
    found = {}
    for step in purged:
        name = step.spec.name
        if step is reader or not rundir.is_done(name, step.fingerprint):
            continue  # it runs anyway (what changed in it is why)
        via = next((i for i in reader.spec.inputs if name == i or name in ancestors(planned, i)), None)
        found[name] = (f"{why} reads it" if via == name else f"{why} reads it through {via!r}" if via else
                       f"{why} reads a purged stage, and every purged stage runs again")
    return found


def ancestors(planned: list[Any], name: str) -> set[str]:
    """Every stage a path of inputs leads from to ``name``."""
    inputs = {step.spec.name: step.spec.inputs for step in planned}
    found: set[str] = set()
    todo = list(inputs[name])
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(inputs[current])
    return found


def purge(planned: list[Any], at: int, rundir: RunDir) -> None:
    """Raw text out of every stage before ``planned[at]`` (the pii stage, committed: its ancestors in the graph)
    and out of the run log."""
    pii = planned[at]
    before = ancestors(planned, pii.spec.name)
    if not rundir.is_done(pii.spec.name, pii.fingerprint):
        return
    redact = _redactor(pii.spec.config)
    for step in (step for step in planned[:at] if step.spec.name in before):
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
