"""The run directory: committed stage outputs, reject rows, stats and the manifest.

    DIR/manifest.json            workflow file + sha256, per-stage fingerprint and what it covers, versions, times
    DIR/stats.json               per stage {"in", "out", "kept", "rejected": {reason: n}, "seconds"}
    DIR/<stage>                  link to the stage's current generation, DIR/.generations/<stage>/<id>/:
        _SUCCESS.json            completion marker: fingerprint, stats, every file of the generation with its size
        data/*.parquet           kept records
        rejects/*.parquet        one row per rejected candidate: key, url, stage, reason, detail, config_hash
        shards/                  a sink's WebDataset shards, indexes and stats (+ _READERS.lock)
    DIR/rejects/<stage>          link to <stage>/rejects (fixed; follows the stage's link)
    DIR/shards                   link to <sink>/shards (fixed; follows the sink's link); with several sinks, to
                                 DIR/.shard-sets/<id>/, a folder of links <sink> -> ../../<sink>/shards, swapped
                                 whole when the workflow's sinks change (link_shard_sets)
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

On an object store (``--run-dir s3://bucket/run``, any fsspec URL; ``pipeline.storage``) the same layout is
kept with what the store offers, where one PUT is atomic and there is no rename, symlink, hard link or flock:

* a generation is written in place under a fresh prefix ``DIR/.generations/<stage>/<fp>-<id>/``: block and
  shard files by server-side copy from ``.progress/`` (the workers' objects; no byte passes through the driver),
  the driver's own files by upload, ``_SUCCESS.json`` last;
* publishing is one PUT of the pointer ``DIR/<stage>/_CURRENT.json`` (``{"target": ".generations/..."}``,
  relative to ``DIR`` as the symlink is). A kill before it leaves the old pointer (the new prefix is garbage,
  collected later); after it, the new generation, whole. ``DIR/rejects/<stage>/_CURRENT.json`` and
  ``DIR/shards/_CURRENT.json`` are fixed pointers to ``../<stage>/rejects`` and ``<sink>/shards``;
* a block or key range a worker finished is a prefix under ``.progress/`` with a ``_DONE`` object written after
  its files (``storage.ObjectStorage.publish``); one without ``_DONE`` is redone;
* the lock is the lease object ``DIR/.lock`` (``storage.ObjectLease``: owner, expiry, renewed; conditional PUTs)
  plus a ``flock`` in the local cache, so one machine never runs two;
* scratch of the stage code, which takes local paths (``StageContext.work_dir``/``progress_dir``: BFS levels,
  candidate chunks, ``.work/``), ``.cache/``, the demo site and ``logs/`` live in a local cache directory keyed by
  the URL (``storage.cache_dir_for``; ``MMCURATE_CACHE_DIR`` moves it): a kill and a re-run on the same machine
  resume from it, a re-run on another machine redoes the BFS levels. Candidate chunks are uploaded to
  ``.progress/`` before block workers read them; the run log is uploaded to ``DIR/logs/run.log`` when the run
  ends. Not yet routed: the page crawl's level and candidate workers (``stages/crawl/pages.py``) write that
  local path, so a page crawl into a remote run directory needs every Ray worker on the driver's machine;
* superseded generations are deleted only once their stage's pointer is older than ``GENERATION_GRACE_S`` and
  no reader lease (``<generation>/shards/_READERS/*.json``, unexpired) names them.
Readers resolve the pointers: ``RunDir.resolve``, and the trainer's shard lookup (``pipeline.train.shards``) for
``s3://bucket/run/shards/*.tar``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcurate.pipeline.storage import (
    LOCAL,
    POINTER,
    _alive,
    LockBusy,
    ObjectLease,
    ObjectStorage,
    cache_dir_for,
    join,
    local_flock,
    normalize,
    storage_for,
)
from mmcurate.stages.files import atomic_write_bytes, fsync_dir, fsync_tree

MARKER = "_SUCCESS.json"
SHARD_SETS = ".shard-sets"  # DIR/.shard-sets/<id>/: the folder of links DIR/shards points at with several sinks
READERS_LOCK = "_READERS.lock"
READERS = "_READERS"  # on an object store: <generation>/shards/_READERS/<token>.json, one lease per reader
GENERATION_GRACE_S = 600.0  # object stores: a superseded generation outlives its pointer's swap by this long
# Testing aid: SIGKILL this process group at a named point: of a commit ("publish:<stage>:before|after"), or of a
# sink once its first key ranges are written ("sink:<stage>:partition", pipeline/sink.py).
KILL_AT_ENV = "MMCURATE_KILL_AT"

log = logging.getLogger("mmcurate.rundir")


def atomic_write_json(path: Path, value: Any, *, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, _json_bytes(value, sort_keys))


def _json_bytes(value: Any, sort_keys: bool = True) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8")


def kill_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        log.warning("%s=%s: killing this process group", KILL_AT_ENV, name)
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one rename. A real directory there (an older layout) is moved aside."""
    LOCAL.set_link(str(link), target)


def _ensure_link(link: Path, target: str) -> None:
    LOCAL.ensure_link(str(link), target)


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


class RunDirBusy(LockBusy):
    """Another mmcurate run holds this run directory."""


OWNER = ".lock.owner"  # the token of the run holding a local run directory's lock


@dataclass(frozen=True)
class RunGuard:
    """Lets a Ray worker ask, before it publishes a block, whether the run that handed it the block still holds
    the run directory. Ray workers can outlive a SIGKILLed CLI by seconds; a block they finish then may hold
    failures the kill caused (its server gone, connections refused), and publishing it would make them permanent.
    Local: the lock is held (a shared flock cannot be taken) and ``DIR/.lock.owner`` names this run's token.
    Remote: the lock object names this run's token and its holder is alive (``storage._alive``)."""

    token: str
    lock: str  # DIR/.lock: a local path, or the lock object's location
    store: Any = None  # the object store of a remote run directory

    def alive(self) -> bool:
        if self.store is not None:
            try:
                holder = json.loads(self.store.fs.cat_file(self.store._path(self.lock)))
            except (FileNotFoundError, ValueError):
                return False
            return holder.get("token") == self.token and _alive(holder)
        try:
            with open(self.lock) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # held exclusively: by this run, if the owner file says so
                else:
                    return False  # nobody holds it: the run is gone
            return Path(self.lock).with_name(OWNER).read_text() == self.token
        except FileNotFoundError:
            return False


class RunDir:
    """A run directory at a local path or an fsspec URL. ``url`` is where it lives; ``local_root`` is where the
    driver keeps what only it reads (the directory itself when local, a cache directory keyed by the URL when
    not). Layout accessors give ``Path``s for a local run directory, as they always did, and URL strings
    (through the stage pointers) for a remote one."""

    def __init__(self, root: str | Path):
        self.url = normalize(root)
        self.store = storage_for(self.url)
        self.remote = not self.store.local
        self.local_root = cache_dir_for(self.url) if self.remote else Path(self.url)
        self._lease: ObjectLease | None = None
        self._guard: RunGuard | None = None
        self._staged: dict[Path, str] = {}  # remote: work dir -> the generation prefix it is written under

    @property
    def guard(self) -> RunGuard:
        """What this run's Ray workers check before they publish (only while the run holds the directory)."""
        if self._guard is None:
            raise RuntimeError(f"{self.url}: not locked by this process")
        return self._guard

    @property
    def root(self) -> Path:
        if self.remote:
            raise TypeError(f"{self.url} is not a local directory: use RunDir.url, RunDir.location(...) or "
                            f"RunDir.local_root")
        return self.local_root

    def location(self, *parts: str) -> str:
        """A location inside the run directory, as written (links not followed)."""
        return join(self.url, *parts)

    def resolve(self, *parts: str) -> str:
        """A location inside the run directory with every link (symlink or pointer object) followed."""
        where = self.location(*parts)
        if not self.remote:
            return os.path.realpath(where)
        return self.store.resolve(where, self.url) or where

    # layout
    def stage_dir(self, stage: str) -> Path | str:
        return self.root / stage if not self.remote else self.current_generation(stage) or self.location(stage)

    def data_dir(self, stage: str) -> Path | str:
        return self.root / stage / "data" if not self.remote else join(self.stage_dir(stage), "data")

    def rejects_dir(self, stage: str) -> Path | str:
        return self.root / "rejects" / stage if not self.remote else self.resolve("rejects", stage)

    @property
    def shards_dir(self) -> Path | str:
        return self.root / "shards" if not self.remote else self.resolve("shards")

    @property
    def work_root(self) -> Path:
        return self.local_root / ".work"

    @property
    def generations_root(self) -> Path | str:
        return self.root / ".generations" if not self.remote else self.location(".generations")

    @property
    def cache_dir(self) -> Path:
        return self.local_root / ".cache"

    def progress_dir(self, stage: str, fingerprint: str) -> Path:
        """The stage's driver-side progress (BFS levels); on a local run directory also the workers' blocks."""
        return self.local_root / ".progress" / f"{stage}-{fingerprint}"

    def progress_location(self, stage: str, fingerprint: str) -> str:
        """Where Ray workers publish the stage's finished blocks and key ranges: the run directory itself."""
        return self.location(".progress", f"{stage}-{fingerprint}")

    @property
    def logs_dir(self) -> Path:
        return self.local_root / "logs"

    # files at the top of the run directory (stats.json, manifest.json)
    def write_json(self, name: str, value: Any, *, sort_keys: bool = True) -> None:
        self.store.write_bytes(self.location(name), _json_bytes(value, sort_keys))

    def read_json(self, name: str) -> Any | None:
        try:
            return json.loads(self.store.read_bytes(self.location(name)))
        except FileNotFoundError:
            return None

    def upload_logs(self) -> None:
        """Remote: copy the driver's run log to ``DIR/logs/run.log`` (a kill leaves it in the local cache only)."""
        log_file = self.logs_dir / "run.log"
        if self.remote and log_file.is_file():
            try:
                self.store.write_bytes(self.location("logs", "run.log"), log_file.read_bytes())
            except Exception as err:  # noqa: BLE001 - never mask the run's own outcome; the local copy stays
                log.warning("run log not uploaded (%s: %s); it is in %s", type(err).__name__, err, log_file)

    # state
    def marker(self, stage: str) -> dict[str, Any] | None:
        if self.remote:
            generation = self.current_generation(stage)
            if generation is None:
                return None
            try:
                return json.loads(self.store.read_bytes(join(generation, MARKER)))
            except FileNotFoundError:
                return None
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
        if self.remote:
            present = self.store.files(self.current_generation(stage))
            changed = [name for name, size in marker["files"].items() if present.get(name) != size]
        else:
            generation = self.stage_dir(stage)
            changed = [name for name, size in marker["files"].items()
                       if not (generation / name).is_file() or (generation / name).stat().st_size != size]
        for name in changed[:1]:
            log.warning("stage %s: %s is missing or changed since its commit; running the stage again", stage, name)
        return not changed

    def current_generation(self, stage: str) -> Path | str | None:
        link = self.location(stage)
        if self.remote:
            resolved = self.store.resolve(link, self.url)
            return resolved if resolved not in (None, link) else None
        link = Path(link)
        return Path(os.path.realpath(link)) if link.is_symlink() and link.exists() else None

    def committed_files(self, stage: str, folder: str = "data") -> list[str]:
        """A committed stage's files in ``folder`` (``data``: its records), through the generation's real
        location whatever the link does later, sorted by name."""
        if not self.remote:
            return [str(p) for p in sorted(Path(os.path.realpath(self.stage_dir(stage) / folder)).glob("*.parquet"))]
        generation = self.current_generation(stage)
        if generation is None:
            return []
        names = (self.marker(stage) or {}).get("files") or self.store.files(generation)
        return [join(generation, n) for n in sorted(names)
                if n.startswith(folder + "/") and n.count("/") == 1 and n.endswith(".parquet")]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer per run directory; a second run on the same DIR fails instead of interleaving writes."""
        if self.remote:
            with self._remote_lock():
                self._clear_work()
                self.collect_generations()
                yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise RunDirBusy(f"{self.root} is in use by another mmcurate run") from err
            self._guard = RunGuard(token=uuid.uuid4().hex, lock=str(self.root / ".lock"))
            atomic_write_bytes(self.root / OWNER, self._guard.token.encode())
            try:
                self._clear_work()
                self.collect_generations()
                yield
            finally:
                self._guard = None

    @contextmanager
    def _remote_lock(self) -> Iterator[None]:
        busy = f"{self.url} is in use by another mmcurate run"
        try:
            with local_flock(self.local_root / ".lock", f"{busy} on this machine"):
                lease = ObjectLease(self.store, self.location(".lock"))
                try:
                    lease.acquire()
                except LockBusy as err:
                    raise RunDirBusy(f"{busy}: {err}") from err
                self._lease = lease
                self._guard = RunGuard(token=lease.token, lock=self.location(".lock"), store=self.store)
                try:
                    yield
                finally:
                    self._lease = self._guard = None
                    lease.release()
        except LockBusy as err:
            if isinstance(err, RunDirBusy):
                raise
            raise RunDirBusy(str(err)) from err

    def _check_lock(self) -> None:
        if self._lease is not None:
            try:
                self._lease.check()
            except LockBusy as err:
                raise RunDirBusy(str(err)) from err

    def _clear_work(self) -> None:
        # leftovers of a killed run: never committed, so never trusted
        shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True)

    def begin_stage(self, stage: str, fingerprint: str | None = None) -> Path:
        """A fresh generation directory under ``.work/`` with ``rejects/`` ready; the stage writes the rest.
        Remote: the driver's files go there; files made elsewhere go straight to ``staging_location(work)``."""
        work = self.work_root / f"{stage}-{uuid.uuid4().hex[:8]}"
        (work / "rejects").mkdir(parents=True)
        if self.remote:
            self._staged[work] = self.location(".generations", stage, f"{fingerprint or 'unnamed'}-{work.name[-8:]}")
        return work

    def staging_location(self, work: Path) -> str:
        """Where files of this generation that already live in the run directory are linked (hard links into
        ``work`` when local; server-side copies under the generation's prefix when remote)."""
        return self._staged[work] if self.remote else str(work)

    def commit_stage(self, stage: str, work: Path, marker: dict[str, Any], *, sink: bool = False,
                     shard_sets: Sequence[str] = ()) -> None:
        """Publish a finished generation: fsync it whole, move it under ``.generations/``, swap the link. A sink's
        shards then take their place in ``DIR/shards`` beside the other sinks of ``shard_sets``, the workflow's
        sinks (``link_shard_sets``; none given: this one alone)."""
        if self.remote:
            self._commit_remote(stage, work, marker, sink=sink, shard_sets=shard_sets)
            return
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
        kill_point(f"publish:{stage}:before")
        _replace_link(self.stage_dir(stage), os.path.relpath(generation, self.root))
        # the fixed links follow the stage link, so they never need a second step to be current
        _ensure_link(self.rejects_dir(stage), os.path.join("..", stage, "rejects"))
        if sink:
            self.link_shard_sets(list(shard_sets) or [stage])
        kill_point(f"publish:{stage}:after")
        for progress in (self.root / ".progress").glob(f"{stage}-*"):
            shutil.rmtree(progress, ignore_errors=True)
        self.collect_generations(stage)

    def link_shard_sets(self, sinks: Sequence[str]) -> None:
        """Make ``DIR/shards`` show the shards of ``sinks`` (the workflow's sinks, in its order) that are
        committed, and nothing else: one sink, ``DIR/shards -> <sink>/shards``; several, ``DIR/shards/<sink>``
        for each. Idempotent: a run whose sinks were all reused still leaves the layout its workflow names.

        Local: with several sinks ``DIR/shards`` is a link to a folder of links, ``DIR/.shard-sets/<id>/<sink> ->
        ../../<sink>/shards``, built whole before one rename swaps it in, as a stage's link is: a reader finds
        ``DIR/shards`` old or new, never missing or half made (a real folder left by an older layout is moved
        aside). Remote: one pointer per set (``DIR/shards/<sink>/_CURRENT.json``) or the one
        ``DIR/shards/_CURRENT.json``, each one PUT; pointers of sets the workflow no longer has are removed."""
        committed = [name for name in sinks if self.current_generation(name) is not None]
        if self.remote:
            self._link_shard_sets_remote(sinks, committed)
            return
        top = self.root / "shards"
        if len(sinks) == 1:
            if committed:
                _ensure_link(top, posixpath.join(sinks[0], "shards"))
            elif top.is_symlink():
                top.unlink()
            self._collect_shard_sets(keep=None)
            return
        wanted = {name: posixpath.join("..", "..", name, "shards") for name in committed}
        current = Path(os.path.realpath(top)) if top.is_symlink() else None
        if (current is not None and current.parent == self.root / SHARD_SETS and current.is_dir()
                and {n: os.readlink(current / n) for n in os.listdir(current)} == wanted):
            return
        folder = self.root / SHARD_SETS / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        for name, target in wanted.items():
            os.symlink(target, folder / name)
        fsync_dir(folder)
        fsync_dir(folder.parent)
        _replace_link(top, os.path.relpath(folder, self.root))
        self._collect_shard_sets(keep=folder)

    def _collect_shard_sets(self, keep: Path | None) -> None:
        """Folders of shard-set links ``DIR/shards`` no longer points at (links only: no reader holds them)."""
        root = self.root / SHARD_SETS
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _link_shard_sets_remote(self, sinks: Sequence[str], committed: list[str]) -> None:
        top = self.location("shards")
        stale = [n for n in self.store.children(top) if n != POINTER and (len(sinks) == 1 or n not in committed)]
        if len(sinks) == 1:
            if committed:
                self.store.ensure_link(top, posixpath.join(sinks[0], "shards"))
            else:
                self.store.remove_link(top)
        else:
            self.store.remove_link(top)  # a pointer at DIR/shards would take every DIR/shards/<set> with it
            for name in committed:
                self.store.ensure_link(self.location("shards", name), posixpath.join("..", name, "shards"))
        for name in stale:
            self.store.remove_link(self.location("shards", name))

    def shard_sets(self) -> dict[str, str]:
        """The shard sets a run published, links followed: {"": DIR/shards} for one sink, {name: DIR/shards/<name>}
        for several. A sink's shard folder is the one holding ``_READERS.lock``."""
        top = self.resolve("shards")
        if self.store.exists(join(top, READERS_LOCK)):
            return {"": top}
        sets = {name: self.resolve("shards", name) for name in self.store.children(top)}
        return {name: where for name, where in sets.items() if self.store.exists(join(where, READERS_LOCK))}

    def _commit_remote(self, stage: str, work: Path, marker: dict[str, Any], *, sink: bool,
                       shard_sets: Sequence[str] = ()) -> None:
        """Everything of the generation under its fresh prefix, ``_SUCCESS.json`` last, then one PUT of the
        stage's pointer."""
        generation = self._staged.pop(work)
        if sink:
            (work / "shards").mkdir(exist_ok=True)
            (work / "shards" / READERS_LOCK).touch()
        files = {**self.store.files(generation), **LOCAL.files(str(work))}
        atomic_write_json(work / MARKER, {**marker, "files": files})
        self.store.publish(work, generation, last=MARKER)
        self._check_lock()
        kill_point(f"publish:{stage}:before")
        self.store.set_link(self.location(stage), posixpath.relpath(generation, self.url))
        self.store.ensure_link(self.location("rejects", stage), posixpath.join("..", stage, "rejects"))
        if sink:
            self.link_shard_sets(list(shard_sets) or [stage])
        kill_point(f"publish:{stage}:after")
        self._remove_progress(stage)
        self.collect_generations(stage)

    def _remove_progress(self, stage: str, fingerprint: str | None = None) -> None:
        pattern = f"{stage}-{fingerprint}" if fingerprint else f"{stage}-*"
        for progress in (self.local_root / ".progress").glob(pattern):
            shutil.rmtree(progress, ignore_errors=True)
        if self.remote:
            for name in self.store.children(self.location(".progress")):
                if (name == f"{stage}-{fingerprint}") if fingerprint else name.startswith(f"{stage}-"):
                    self.store.remove_tree(self.location(".progress", name))

    def discard_progress(self, stage: str, fingerprint: str) -> None:
        """Drop progress kept for a stage that is committed under that fingerprint (a kill after the link swap
        can leave it behind; it would never be read again)."""
        if self.remote:
            self._remove_progress(stage, fingerprint)
            return
        shutil.rmtree(self.progress_dir(stage, fingerprint), ignore_errors=True)

    def collect_generations(self, stage: str | None = None) -> None:
        """Delete generations no link points at, unless a reader still holds one."""
        if self.remote:
            self._collect_remote(stage)
            return
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

    def _collect_remote(self, stage: str | None) -> None:
        """A superseded generation is deleted once its stage's pointer has been in place for the grace period
        (a reader that resolved the old pointer just before the swap has had time to take its lease) and no
        unexpired reader lease names it. Generations of a stage that never committed are garbage at once."""
        store = self.store
        assert isinstance(store, ObjectStorage)
        stages = [stage] if stage else store.children(self.generations_root)
        for name in stages:
            current = self.current_generation(name)
            if current is not None:
                try:
                    since = json.loads(store.read_bytes(join(self.location(name), "_CURRENT.json"))).get("since", 0)
                except FileNotFoundError:
                    since = 0
                if time.time() - float(since) < GENERATION_GRACE_S:
                    continue
            for child in store.children(join(self.generations_root, name)):
                generation = join(self.generations_root, name, child)
                if generation == current:
                    continue
                if _reader_leases(store, generation):
                    log.info("keeping %s: a reader holds a lease on it", generation)
                    continue
                store.remove_tree(generation)


def _reader_leases(store: ObjectStorage, generation: str) -> list[str]:
    """Unexpired reader leases under a generation (``shards/_READERS/<token>.json``: {"expires": epoch s})."""
    folder = join(generation, "shards", READERS)
    names = [n for n in store.children(folder) if n.endswith(".json")]
    live = []
    for name, body in zip(names, store.read_many([join(folder, n) for n in names])):
        try:
            if float(json.loads(body).get("expires", 0)) > time.time():
                live.append(name)
        except (ValueError, AttributeError):
            continue
    return live


@contextmanager
def reader_leases(locations: list[str], ttl_s: float = 300.0) -> Iterator[list[str]]:
    """The object-store form of the trainer's shared ``_READERS.lock``: for each remote directory of shards the
    pipeline published (it holds a ``_READERS.lock`` object), a lease object ``_READERS/<token>.json`` with an
    expiry, renewed every third of ``ttl_s`` until the context ends and then deleted. ``collect_generations``
    keeps a generation while an unexpired lease names it (a killed reader's lease runs out by itself)."""
    token = uuid.uuid4().hex
    held: list[tuple[ObjectStorage, str]] = []
    stop = threading.Event()

    def body() -> bytes:
        return json.dumps({"expires": time.time() + ttl_s, "pid": os.getpid(), "host": socket.gethostname()}).encode()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            for store, lease in held:
                try:
                    store.write_bytes(lease, body())
                except Exception as err:  # noqa: BLE001 - a missed renewal is logged; the next one may succeed
                    log.warning("could not renew the reader lease %s: %s", lease, err)

    try:
        # only what a pipeline published: resolved shard locations lie under DIR/.generations/<stage>/
        for folder in sorted({f for f in locations if "/.generations/" in f}):
            store = storage_for(folder)
            if store.local:
                continue
            lease = join(folder, READERS, f"{token}.json")
            try:
                if not store.exists(join(folder, READERS_LOCK)):
                    continue
                store.write_bytes(lease, body())
            except Exception as err:  # noqa: BLE001 - read-only credentials, say: read unguarded, as before
                log.warning("no reader lease on %s (%s: %s); a newer run may delete it while it is read",
                            folder, type(err).__name__, err)
                continue
            held.append((store, lease))
            if not store.exists(join(folder, READERS_LOCK)):
                raise RuntimeError(f"the shard generation {folder} was deleted while the trainer was taking its "
                                   f"reader lease (the pipeline published a newer one); run the trainer again")
        thread = threading.Thread(target=renew, name="mmcurate-reader-lease", daemon=True)
        thread.start()
        yield [lease for _, lease in held]
        stop.set()
        thread.join()
    finally:
        stop.set()
        for store, lease in held:
            with contextlib.suppress(FileNotFoundError):
                store.fs.rm_file(store.fs._strip_protocol(lease))
