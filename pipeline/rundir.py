"""The run directory: committed stage outputs, reject rows, stats and the manifest.

    DIR/manifest.json            workflow file + sha256, per-stage config hash and fingerprint, versions, times
    DIR/stats.json               per stage {"in", "kept", "rejected": {reason: n}, "seconds"}
    DIR/<stage>/_SUCCESS.json    completion marker: fingerprint, stats; present only for a committed stage
    DIR/<stage>/data/*.parquet   kept records
    DIR/rejects/<stage>/*.parquet  one row per rejected sample: key, url, stage, reason, detail, config_hash
    DIR/shards/                  WebDataset shards with their parquet indexes and stats (the shard stage's output)
    DIR/logs/run.log

A stage is written into ``DIR/.work/<stage>-<random>/`` and published by renames: its rejects first, its own
directory (which holds the marker) last. A run killed at any moment leaves either a committed stage or nothing
that counts, so restarting redoes exactly the uncommitted stages. Within a stage, long work may record finished
pieces in ``DIR/.progress/<stage>-<fingerprint>/`` (each piece written whole, then renamed); a restarted stage
with the same fingerprint reuses them, and they are deleted when the stage commits.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcurate.stages.files import atomic_write_bytes

MARKER = "_SUCCESS.json"


def atomic_write_json(path: Path, value: Any, *, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=sort_keys) + "\n").encode("utf-8"))


def _replace_dir(new: Path, target: Path, trash_root: Path) -> None:
    """Put ``new`` at ``target``; an old ``target`` is moved aside first (rename is atomic, rmtree is not)."""
    if target.exists():
        trash = trash_root / f"trash-{uuid.uuid4().hex[:8]}"
        os.rename(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(new, target)


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
        marker = self.marker(stage)
        return bool(marker and marker.get("fingerprint") == fingerprint and self.rejects_dir(stage).is_dir())

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer per run directory; a second run on the same DIR fails instead of interleaving writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise RuntimeError(f"{self.root} is in use by another mmcurate run") from err
            self._clear_work()
            yield

    def _clear_work(self) -> None:
        # leftovers of a killed run: never committed, so never trusted
        shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True)

    def begin_stage(self, stage: str) -> Path:
        work = self.work_root / f"{stage}-{uuid.uuid4().hex[:8]}"
        (work / "stage").mkdir(parents=True)
        (work / "rejects").mkdir()
        return work

    def commit_stage(self, stage: str, work: Path, marker: dict[str, Any], shards: Path | None = None) -> None:
        """Publish a finished stage. Order matters: the marker is inside the stage directory, renamed last."""
        atomic_write_json(work / "stage" / MARKER, marker)
        _replace_dir(work / "rejects", self.rejects_dir(stage), self.work_root)
        if shards is not None:
            _replace_dir(shards, self.shards_dir, self.work_root)
        _replace_dir(work / "stage", self.stage_dir(stage), self.work_root)
        shutil.rmtree(work, ignore_errors=True)
        for progress in (self.root / ".progress").glob(f"{stage}-*"):
            shutil.rmtree(progress, ignore_errors=True)

    def invalidate(self, stage: str) -> None:
        """Remove a stage's marker so that it and everything after it is known to be stale."""
        marker = self.stage_dir(stage) / MARKER
        if marker.exists():
            marker.unlink()
