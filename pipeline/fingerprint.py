"""Content-addressed stage fingerprints: a committed stage is reused only when everything it was made from is
the same.

A stage's fingerprint covers
  * its fingerprinted inputs' fingerprints (so a change upstream re-runs everything downstream),
  * its kind and its resolved config, defaults and ``${...}`` values included (``model_dump``),
  * its code: a digest of the source files of the stage's implementation package, ``stages/base.py``,
    ``stages/files.py`` and ``schemas/`` (so changed code or changed built-in defaults re-run it),
  * the bytes of its input files (URL lists, WARCs), read once and cached by (path, size, mtime_ns) in
    ``DIR/.cache/file_digests.json`` so a no-op re-run does not re-read a 100 GB archive,
  * for a source stage, the workflow's ``serve:`` section (the demo site's seed and size).
What it does not cover: the contents of remote URLs (a crawl is a snapshot; re-crawl with a new run dir).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from mmcurate.pipeline.stages_registry import implementation_module
from mmcurate.stages.files import atomic_write_bytes

SHARED_CODE = ("mmcurate.stages.base", "mmcurate.stages.files", "mmcurate.schemas")
_READ = 1 << 20


def _module_files(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find module {module}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every .py file under it
        return sorted(p for location in spec.submodule_search_locations for p in Path(location).rglob("*.py"))
    return [origin]


def code_version(kind: str) -> str:
    """Digest of the source a stage kind runs: its implementation package (or module) and the shared contract."""
    implementation = implementation_module(kind)
    if implementation.count(".") > 2:  # mmcurate.stages.crawl.x → the whole mmcurate.stages.crawl package
        implementation = ".".join(implementation.split(".")[:3])
    digest = hashlib.sha256()
    for module in (implementation, *SHARED_CODE):
        for path in _module_files(module):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class FileDigests:
    """sha256 of input files, cached by (real path, size, mtime_ns)."""

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        try:
            self._cache: dict[str, Any] = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            self._cache = {}
        self._dirty = False

    def digest(self, path: str) -> str:
        real = os.path.realpath(path)
        try:
            stat = os.stat(real)
        except OSError as err:
            # the stage itself reports a missing input with its own message; the fingerprint just differs
            return f"unreadable: {type(err).__name__}"
        entry = self._cache.get(real)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            while chunk := handle.read(_READ):
                digest.update(chunk)
        self._cache[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
        self._dirty = True
        return digest.hexdigest()

    def save(self) -> None:
        if self._dirty:
            atomic_write_bytes(self.cache_path, json.dumps(self._cache, indent=1, sort_keys=True).encode())
            self._dirty = False


def stage_fingerprint(
    *, kind: str, config: Any, upstream: list[str], files: FileDigests, serve: dict[str, Any] | None,
    run_root: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The fingerprint and what it was computed from (written to the manifest, so a re-run can be explained).
    Input files inside ``run_root`` are another stage's output (a model a global stage published): the upstream
    fingerprint covers them, and they may not exist yet; ``run_dir_inputs`` (imported labels) are hashed anyway."""
    inside = (os.path.realpath(run_root) + os.sep) if run_root else None
    covered = {
        "kind": kind,
        "config": config.model_dump(mode="json"),
        "code": code_version(kind),
        "upstream": upstream,
        "files": {path: files.digest(path) for path in config.input_files()
                  if not (inside and os.path.realpath(path).startswith(inside)) or path in config.run_dir_inputs()},
        "serve": serve,
    }
    blob = json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16], covered
