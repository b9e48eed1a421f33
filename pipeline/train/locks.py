"""The two file locks a training run holds on its driver, both ``flock`` so the kernel drops them when the
process dies (a SIGKILLed trainer never leaves a stale lock behind; the files it leaves carry no meaning).

* ``run_lock(train_dir)``: exclusive on ``RUN_DIR/train/.lock``, taken without waiting. Two trainers on one run
  directory would interleave checkpoints, ledger lines and ``metrics.jsonl``; the second one fails at once.
* ``reader_locks(paths)``: shared on ``_READERS.lock`` in every directory holding local shards, where the pipeline
  put one. The pipeline deletes an old shard generation only when it can lock that file exclusively, so while a
  run holds it the shards it reads stay on disk even after ``DIR/shards`` is pointed at a newer generation.

flock over NFS works on Linux (the client maps it to an NFS byte-range lock), which is what a shared run
directory needs.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

RUN_LOCK = ".lock"
from mmcurate.pipeline.rundir import READERS_LOCK, reader_leases  # noqa: E402 (the file the pipeline puts in each generation)


class RunDirLocked(RuntimeError):
    """Another trainer holds this run directory."""


@contextmanager
def run_lock(train_dir: str | Path) -> Iterator[Path]:
    path = Path(train_dir) / RUN_LOCK
    # os.open gives a non-inheritable descriptor: processes the driver spawns (a local Ray) cannot keep it alive
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(
                f"{path} is locked by another trainer ({_holder(fd)}): one run directory takes one trainer at a "
                f"time. Wait for that run to end, or train into another run directory (--run-dir)."
            ) from None
        # who holds it, for the message above; informative only, the flock is what excludes
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield path
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def reader_locks(paths: Iterable[str], *, wait_s: float = 30.0) -> Iterator[list[str]]:
    """Hold a shared flock on ``_READERS.lock`` in each distinct directory of the local ``paths`` (already real
    paths: a lock taken through a symlink that is swapped later would guard the wrong generation). Yields the
    lock files held; directories without one (shards the pipeline did not publish) are read unguarded."""
    paths = list(paths)
    dirs = sorted({os.path.dirname(p) for p in paths if "://" not in p})
    with ExitStack() as stack:
        held = []
        for directory in dirs:
            lock = os.path.join(directory, READERS_LOCK)
            try:
                fd = os.open(lock, os.O_RDONLY)  # read-only: the file belongs to the pipeline
            except FileNotFoundError:
                continue
            stack.callback(os.close, fd)  # closing the descriptor releases the lock
            _lock_shared(fd, lock, wait_s)
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # deleted between our open and our lock: we would guard nothing
                raise RuntimeError(
                    f"the shard generation {directory} was deleted while the trainer was locking it (the pipeline "
                    f"published a newer one); run the trainer again to read the current shards"
                )
            held.append(lock)
        # remote shards (a run directory on an object store): a renewed lease object per generation instead
        held += stack.enter_context(reader_leases([p.rsplit("/", 1)[0] for p in paths if "://" in p]))
        yield held


def _lock_shared(fd: int, lock: str, wait_s: float) -> None:
    # the pipeline holds the lock exclusively only for the instant of its check, so a short wait is enough; a
    # blocking call could hang on a stuck holder with no message
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{lock} stayed locked exclusively for {wait_s:.0f} s: the pipeline may be deleting that "
                    f"shard generation"
                ) from None
            time.sleep(0.1)
