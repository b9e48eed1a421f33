"""The run directory: committed stage outputs, reject rows, stats and the manifest.

    DIR/manifest.json            workflow file + sha256, per-stage fingerprint and what it covers, versions, times
    DIR/stats.json               per stage {"in", "out", "kept", "rejected": {reason: n}, "seconds"}
    DIR/<stage>                  link to the stage's current generation, DIR/.generations/<stage>/<id>/:
        _SUCCESS.json            completion marker: fingerprint, stats
        data/*.parquet           kept records
        rejects/*.parquet        one row per rejected candidate: key, url, stage, reason, detail, config_hash
        shards/                  a sink's WebDataset shards, indexes and stats (+ _READERS.lock)
    DIR/rejects/<stage>          link to <stage>/rejects (fixed; follows the stage's link)
    DIR/shards                   link to <sink>/shards (fixed; follows the sink's link)
    DIR/logs/run.log
    DIR/.work/                   a stage being written (discarded when the next run takes the lock)
    DIR/.progress/<stage>-<fp>/  finished pieces of an uncommitted stage (kept across a kill, removed at commit)
    DIR/.cache/                  file digests by (path, size, mtime)

Publishing a stage is one atomic step: its generation directory is written and fsynced in full under
``.work/``, moved under ``.generations/``, and then the stage's link is replaced by a single ``rename`` of a new
link over it. A run killed at any moment leaves each stage's link pointing at a complete generation (or at
nothing), so a restart redoes exactly the stages whose marker does not match. The previous generation stays on
disk until no reader holds its ``_READERS.lock`` (the trainer takes a shared lock on the shards it reads), so
``mmcurate run`` never pulls shards out from under a training job.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcurate.stages.files import atomic_write_bytes, fsync_dir, fsync_tree

MARKER = "_SUCCESS.json"
READERS_LOCK = "_READERS.lock"
# Testing aid: SIGKILL this process group at a named point of a commit ("publish:<stage>:before|after").
KILL_AT_ENV = "MMCURATE_KILL_AT"

log = logging.getLogger("mmcurate.rundir")


def atomic_write_json(path: Path, value: Any, *, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8"))


def _kill_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        log.warning("%s=%s: killing this process group", KILL_AT_ENV, name)
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one rename. A real directory there (an older layout) is moved aside."""
    if link.exists() and not link.is_symlink():
        trash = link.with_name(f".{link.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(link, trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp = link.with_name(f".{link.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _ensure_link(link: Path, target: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    _replace_link(link, target)


def _remove_unless_read(generation: Path, trash_root: Path) -> bool:
    """Delete ``generation`` unless a reader holds one of its lock files. The exclusive locks are held while the
    generation is renamed away, so a reader cannot slip in between the check and the delete (a reader that opened
    a lock file before the rename finds it unlinked when its lock is granted, and reads the current generation)."""
    held = []
    try:
        for lock_path in sorted(generation.rglob(READERS_LOCK)):
            handle = open(lock_path, "a")
            held.append(handle)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        trash_root.mkdir(parents=True, exist_ok=True)
        trash = trash_root / f"trash-{generation.name}-{uuid.uuid4().hex[:8]}"
        os.rename(generation, trash)
        for lock_path in trash.rglob(READERS_LOCK):
            lock_path.unlink()
    finally:
        for handle in held:
            handle.close()
    shutil.rmtree(trash, ignore_errors=True)
    return True


class RunDirBusy(RuntimeError):
    """Another mmcurate run holds this run directory."""


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # layout
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def data_dir(self, stage: str) -> Path:
        return self.root / stage / "data"

    def rejects_dir(self, stage: str) -> Path:
        return self.root / "rejects" / stage

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def work_root(self) -> Path:
        return self.root / ".work"

    @property
    def generations_root(self) -> Path:
        return self.root / ".generations"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    def progress_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / ".progress" / f"{stage}-{fingerprint}"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    # state
    def marker(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage) / MARKER
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """Committed under ``fingerprint``, with every file the commit listed still there at its size (a shard
        deleted or truncated by hand makes the stage run again)."""
        marker = self.marker(stage)
        if not (marker and marker.get("fingerprint") == fingerprint and "files" in marker):
            return False
        generation = self.stage_dir(stage)
        for name, size in marker["files"].items():
            path = generation / name
            if not path.is_file() or path.stat().st_size != size:
                log.warning("stage %s: %s is missing or changed since its commit; running the stage again", stage, name)
                return False
        return True

    def current_generation(self, stage: str) -> Path | None:
        link = self.stage_dir(stage)
        return Path(os.path.realpath(link)) if link.is_symlink() and link.exists() else None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer per run directory; a second run on the same DIR fails instead of interleaving writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise RunDirBusy(f"{self.root} is in use by another mmcurate run") from err
            self._clear_work()
            self.collect_generations()
            yield

    def _clear_work(self) -> None:
        # leftovers of a killed run: never committed, so never trusted
        shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True)

    def begin_stage(self, stage: str) -> Path:
        """A fresh generation directory under ``.work/`` with ``rejects/`` ready; the stage writes the rest."""
        work = self.work_root / f"{stage}-{uuid.uuid4().hex[:8]}"
        (work / "rejects").mkdir(parents=True)
        return work

    def commit_stage(self, stage: str, work: Path, marker: dict[str, Any], *, sink: bool = False) -> None:
        """Publish a finished generation: fsync it whole, move it under ``.generations/``, swap the link."""
        if sink:
            (work / "shards").mkdir(exist_ok=True)
            (work / "shards" / READERS_LOCK).touch()
        files = {str(p.relative_to(work)): p.stat().st_size for p in sorted(work.rglob("*")) if p.is_file()}
        atomic_write_json(work / MARKER, {**marker, "files": files})
        fsync_tree(work)
        generation = self.generations_root / stage / f"{marker['fingerprint']}-{uuid.uuid4().hex[:8]}"
        generation.parent.mkdir(parents=True, exist_ok=True)
        os.rename(work, generation)
        fsync_dir(generation.parent)
        _kill_point(f"publish:{stage}:before")
        _replace_link(self.stage_dir(stage), os.path.relpath(generation, self.root))
        # the fixed links follow the stage link, so they never need a second step to be current
        _ensure_link(self.rejects_dir(stage), os.path.join("..", stage, "rejects"))
        if sink:
            _ensure_link(self.shards_dir, os.path.join(stage, "shards"))
        _kill_point(f"publish:{stage}:after")
        for progress in (self.root / ".progress").glob(f"{stage}-*"):
            shutil.rmtree(progress, ignore_errors=True)
        self.collect_generations(stage)

    def discard_progress(self, stage: str, fingerprint: str) -> None:
        """Drop progress kept for a stage that is committed under that fingerprint (a kill after the link swap
        can leave it behind; it would never be read again)."""
        shutil.rmtree(self.progress_dir(stage, fingerprint), ignore_errors=True)

    def collect_generations(self, stage: str | None = None) -> None:
        """Delete generations no link points at, unless a reader still holds one."""
        if not self.generations_root.is_dir():
            return
        stage_roots = [self.generations_root / stage] if stage else sorted(self.generations_root.iterdir())
        for stage_root in stage_roots:
            if not stage_root.is_dir():
                continue
            current = self.current_generation(stage_root.name)
            for generation in sorted(stage_root.iterdir()):
                if current is not None and generation.resolve() == current:
                    continue
                if not _remove_unless_read(generation, self.work_root):
                    log.info("keeping %s: a reader holds it", generation)

    def invalidate(self, stage: str) -> None:
        """Remove a stage's link so that it and everything after it is known to be stale."""
        link = self.stage_dir(stage)
        if link.is_symlink():
            link.unlink()
