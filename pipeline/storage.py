"""Where a run directory lives: a local path, or any fsspec URL of an object store (``s3://``, ``gs://``, ...).

One set of operations, two implementations. ``LocalStorage`` is the run directory as it always was: a file is
written to a temporary name, fsynced and renamed; a directory is published by one rename; a link is a symlink
swapped in one rename; "linking" a finished file into a generation is a hard link; the lock is ``flock``.
``ObjectStorage`` does the same jobs with what an object store offers, where one PUT is atomic and nothing else is:

* an object is written whole by one PUT (``write_bytes``) or not at all;
* a directory is published by uploading its files and then one small ``_DONE`` object: a directory without
  ``_DONE`` is unfinished, whatever it holds, and is cleared before it is written again;
* a link is a pointer object ``<link>/_CURRENT.json`` naming its target relative to the link's parent, as a
  relative symlink does; ``resolve`` follows them (``pipeline.train.shards`` does too);
* a hard link is a server-side copy (``fs.copy``: no byte passes through this process);
* the lock is a lease object with an owner and an expiry, renewed while the run lives (``ObjectLease``).

Credentials are never handled here: fsspec and its backends read them from the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``FSSPEC_S3_ENDPOINT_URL``, ...) or their
own configuration, in the driver and in every Ray worker, so none is pickled, logged or written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mmcurate.stages.files import atomic_write_bytes, fsync_dir, fsync_tree

POINTER = "_CURRENT.json"  # on an object store, what a symlink is on a disk
DONE = "_DONE"  # on an object store, written last into a directory published whole
CACHE_ENV = "MMCURATE_CACHE_DIR"  # driver-local scratch of remote run directories (default ~/.cache/mmcurate)
LEASE_ENV = "MMCURATE_LEASE_S"  # how long a run's lock object stays valid without a renewal (default 60)

log = logging.getLogger("mmcurate.storage")


class LockBusy(RuntimeError):
    """Another run holds the lock (``pipeline.rundir.RunDirBusy`` subclasses it)."""


def is_url(location: str | os.PathLike) -> bool:
    """A location fsspec must open (``s3://...``); local paths and ``file://`` URLs are not."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """An absolute local path (symlinks resolved), or the URL without a trailing slash."""
    text = str(location)
    if is_url(text):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).resolve())


def join(location: str | os.PathLike, *parts: str) -> str:
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(str(location), *parts)


def name_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def stem_of(location: str) -> str:
    name = name_of(location)
    return name.rsplit(".", 1)[0] if "." in name else name


def storage_for(location: str | os.PathLike) -> Storage:
    return _object_storage(str(location).split("://", 1)[0]) if is_url(location) else LOCAL


def cache_root() -> Path:
    """This machine's mmcurate cache: ``MMCURATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmcurate`` (~/.cache)."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmcurate"))


def cache_dir_for(url: str) -> Path:
    """The driver-local scratch of a remote run directory: one directory per URL on this machine."""
    base = cache_root()
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.split("://", 1)[-1])[-60:]
    return (Path(base) / "rundirs" / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}").resolve()


def open_input(location: str) -> IO[bytes]:
    """A readable binary file for a local path or a URL (what Ray workers read blocks through)."""
    return storage_for(location).open(location)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local path holding ``location``'s bytes for as long as the context lasts (the path itself if local)."""
    store = storage_for(location)
    if store.local:
        yield location
        return
    with tempfile.TemporaryDirectory(prefix="mmcurate-input-") as tmp:
        path = os.path.join(tmp, name_of(location))
        store.fs.get_file(store.fs._strip_protocol(location), path)
        yield path


class Storage:
    """The operations a run directory needs. Locations are absolute local paths or URLs (``join`` builds them)."""

    local: bool

    # files
    def exists(self, location: str) -> bool: ...
    def read_bytes(self, location: str) -> bytes: ...
    def read_many(self, locations: list[str]) -> list[bytes]: ...
    def write_bytes(self, location: str, data: bytes) -> None: ...  # atomic: the whole object, or nothing
    def open(self, location: str, mode: str = "rb") -> IO[Any]: ...
    def files(self, location: str) -> dict[str, int]: ...  # every file below, relative name -> size
    def children(self, location: str) -> list[str]: ...  # names directly below (files and directories)
    def remove_tree(self, location: str) -> None: ...
    def link_many(self, pairs: Iterable[tuple[str, str]]) -> None: ...  # (existing file, new name)
    # a directory published whole
    def staging(self, location: str) -> Path: ...  # a local directory to write its files into
    def publish(self, staged: Path, location: str, *, last: str | None = None) -> None: ...
    def abandon(self, staged: Path) -> None: ...
    def published(self, location: str) -> bool: ...
    def published_children(self, location: str) -> list[str]: ...
    # links
    def set_link(self, link: str, target: str) -> None: ...  # target relative to the link's parent
    def ensure_link(self, link: str, target: str) -> None: ...
    def remove_link(self, link: str) -> None: ...
    def resolve(self, location: str, root: str) -> str | None: ...  # through every link below root; None: none
    # readers (pyarrow, Ray Data)
    def arrow(self, locations: list[str]) -> tuple[list[str], Any]: ...  # (paths, pyarrow filesystem or None)


class LocalStorage(Storage):
    local = True

    def exists(self, location: str) -> bool:
        return os.path.exists(location)

    def read_bytes(self, location: str) -> bytes:
        return Path(location).read_bytes()

    def read_many(self, locations: list[str]) -> list[bytes]:
        return [Path(p).read_bytes() for p in locations]

    def write_bytes(self, location: str, data: bytes) -> None:
        atomic_write_bytes(Path(location), data)

    def open(self, location: str, mode: str = "rb") -> IO[Any]:
        return open(location, mode)

    def files(self, location: str) -> dict[str, int]:
        root = Path(location)
        if not root.is_dir():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}

    def children(self, location: str) -> list[str]:
        return sorted(os.listdir(location)) if os.path.isdir(location) else []

    def remove_tree(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)

    def link_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        # hard links: the bytes were written once, and the original stays where it is until its owner removes it
        for source, target in pairs:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(source, target)

    def staging(self, location: str) -> Path:
        final = Path(location)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, staged: Path, location: str, *, last: str | None = None) -> None:
        """fsync every file, then one rename: the directory appears whole under its name, or not at all."""
        fsync_tree(staged)
        os.rename(staged, location)
        fsync_dir(Path(location).parent)

    def abandon(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def published(self, location: str) -> bool:
        return os.path.isdir(location)

    def published_children(self, location: str) -> list[str]:
        root = Path(location)
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []

    def set_link(self, link: str, target: str) -> None:
        """Point ``link`` at ``target`` in one rename. A real directory there (an older layout) is moved aside."""
        path = Path(link)
        if path.exists() and not path.is_symlink():
            trash = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.link-{uuid.uuid4().hex[:8]}")
        os.symlink(target, tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def ensure_link(self, link: str, target: str) -> None:
        path = Path(link)
        if path.is_symlink() and os.readlink(path) == target:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.set_link(link, target)

    def remove_link(self, link: str) -> None:
        if os.path.islink(link):
            os.unlink(link)

    def resolve(self, location: str, root: str) -> str | None:
        return os.path.realpath(location) if os.path.exists(location) else None

    def arrow(self, locations: list[str]) -> tuple[list[str], Any]:
        return [str(p) for p in locations], None


class ObjectStorage(Storage):
    """An fsspec filesystem for one protocol, built from the environment and fsspec's configuration. Listings
    are never cached: Ray workers write objects this process lists a moment later."""

    local = False

    def __init__(self, protocol: str):
        import fsspec

        self.protocol = protocol
        self.fs = fsspec.filesystem(protocol, use_listings_cache=False)

    def __reduce__(self) -> tuple[Any, ...]:  # Ray workers build their own client, from their own environment
        return _object_storage, (self.protocol,)

    def _path(self, location: str) -> str:
        return self.fs._strip_protocol(location)

    def _url(self, path: str) -> str:
        return f"{self.protocol}://{path}"

    def exists(self, location: str) -> bool:
        return self.fs.exists(self._path(location))

    def read_bytes(self, location: str) -> bytes:
        return self.fs.cat_file(self._path(location))

    def read_many(self, locations: list[str]) -> list[bytes]:
        if not locations:
            return []
        paths = [self._path(p) for p in locations]
        found = self.fs.cat(paths, on_error="raise")  # concurrent GETs
        return [found[p] for p in paths]

    def write_bytes(self, location: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(location), data)

    def open(self, location: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self._path(location), mode)

    def files(self, location: str) -> dict[str, int]:
        root = self._path(location).rstrip("/")
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        return {path[len(root) + 1 :]: info["size"] for path, info in sorted(found.items())
                if path.startswith(root + "/") and info.get("type") != "directory"}

    def children(self, location: str) -> list[str]:
        try:
            return sorted(name_of(p) for p in self.fs.ls(self._path(location), detail=False))
        except FileNotFoundError:
            return []

    def remove_tree(self, location: str) -> None:
        paths = [join(self._path(location), rel) for rel in self.files(location)]
        if paths:
            self.fs.rm(paths)

    def link_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        if pairs:  # server-side copies, issued concurrently
            self.fs.copy([self._path(s) for s, _ in pairs], [self._path(t) for _, t in pairs])

    def upload(self, pairs: list[tuple[Path, str]]) -> None:
        if pairs:
            self.fs.put([str(p) for p, _ in pairs], [self._path(t) for _, t in pairs])

    def staging(self, location: str) -> Path:
        return Path(tempfile.mkdtemp(prefix="mmcurate-staging-"))

    def publish(self, staged: Path, location: str, *, last: str | None = None) -> None:
        """Upload every file, then ``last`` (or an empty ``_DONE``): its presence says the directory is whole.
        Whatever a killed attempt left there is cleared first, so a published directory holds this attempt's
        files only. ``last`` given: the directory is fresh (a new generation), nothing is cleared."""
        if last is None:
            self.remove_tree(location)
        files = [p for p in sorted(staged.rglob("*")) if p.is_file()]
        final = [p for p in files if last is not None and str(p.relative_to(staged)) == last]
        self.upload([(p, join(location, str(p.relative_to(staged)))) for p in files if p not in final])
        if final:
            self.write_bytes(join(location, last), final[0].read_bytes())
        else:
            self.write_bytes(join(location, DONE), b"")
        shutil.rmtree(staged, ignore_errors=True)

    def abandon(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def published(self, location: str) -> bool:
        return self.exists(join(location, DONE))

    def published_children(self, location: str) -> list[str]:
        return sorted(rel.split("/")[0] for rel in self.files(location) if rel.count("/") == 1 and rel.endswith("/" + DONE))

    def set_link(self, link: str, target: str) -> None:
        # "since": when the link last moved (a superseded generation is kept for a grace period after it)
        self.write_bytes(join(link, POINTER), json.dumps({"target": target, "since": time.time()}).encode())

    def _read_link(self, link: str) -> str | None:
        try:
            return json.loads(self.fs.cat_file(self._path(join(link, POINTER))))["target"]
        except FileNotFoundError:
            return None

    def ensure_link(self, link: str, target: str) -> None:
        if self._read_link(link) != target:
            self.set_link(link, target)

    def remove_link(self, link: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(join(link, POINTER)))

    def resolve(self, location: str, root: str) -> str | None:
        """``location`` with every pointer below ``root`` followed, as the kernel follows symlinks."""
        return resolve_pointers(self, location, root)

    def arrow(self, locations: list[str]) -> tuple[list[str], Any]:
        return [self._path(p) for p in locations], arrow_filesystem(self.protocol)


def resolve_pointers(store: ObjectStorage, location: str, root: str, hops: int = 16) -> str | None:
    root = root.rstrip("/")
    for _ in range(hops):
        rest = location[len(root) :].strip("/").split("/") if location.startswith(root) else []
        for i in range(1, len(rest) + 1):
            prefix = join(root, *rest[:i])
            target = store._read_link(prefix)
            if target is not None:
                parent = prefix.rsplit("/", 1)[0]
                scheme, path = parent.split("://", 1)
                joined = posixpath.normpath(posixpath.join(path, target))
                location = join(f"{scheme}://{joined}", *rest[i:])
                break
        else:
            return location
    raise OSError(f"{location}: too many pointer hops (a loop of {POINTER} objects?)")


def resolve_url(url: str) -> str:
    """A URL with every pointer object along it followed, from the top of its bucket (what a reader of a remote
    run directory's ``DIR/shards/...`` reads). Local paths and http(s) URLs, which hold no pointers, unchanged."""
    if not is_url(url) or url.split("://", 1)[0] in ("http", "https"):
        return url
    scheme, path = url.split("://", 1)
    return resolve_pointers(_object_storage(scheme), url, f"{scheme}://{path.split('/', 1)[0]}") or url


@functools.cache
def _object_storage(protocol: str) -> ObjectStorage:
    return ObjectStorage(protocol)


@functools.cache
def arrow_filesystem(protocol: str) -> Any:
    """A pyarrow filesystem over the fsspec one (for pyarrow datasets and Ray Data); paths without the protocol."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(_object_storage(protocol).fs))


LOCAL = LocalStorage()


def filesystem_threads(location: str | os.PathLike) -> bool:
    """Whether a pyarrow scan of ``location`` may use Arrow's thread pool. Not over ``arrow_filesystem``: Arrow
    threads calling into the Python fsspec handler abort the interpreter at exit now and then ("terminate called
    without an active exception", about one exit in three here), so remote scans on the driver run single-threaded."""
    return not is_url(location)


# --- locks


@contextlib.contextmanager
def local_flock(path: Path, busy: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` held for the context; the kernel drops it when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise LockBusy(busy) from err
        yield


class ObjectLease:
    """One writer per remote run directory: the object ``DIR/.lock`` names its holder (a random token, host, pid)
    and an expiry, and the holder renews it every third of the lease.

    Taking it: absent, it is created with a conditional PUT (``If-None-Match: *``, S3); present, it is taken over
    only when its lease has expired, or when its holder ran on this host and that process is gone (a killed run
    resumes at once instead of waiting out the lease), with a PUT conditional on the ETag that was read
    (``If-Match``). Losing either race is a refusal, never a second writer. A renewal that finds the object changed
    marks the lease lost, and ``check()`` (called before every link swap) stops the run.

    What it does not protect against: a holder paused (or cut off) past its lease while another machine takes the
    lock can still write objects before its next ``check()``; on stores whose fsspec backend has no conditional
    PUT (anything but s3fs here) taking the lock is a write followed by a read-back, which two machines starting
    in the same instant can both pass. One machine is always safe: the CLI also holds a ``flock`` in the local
    cache of the URL, and the lease refuses a live process on the same host."""

    def __init__(self, store: ObjectStorage, location: str, ttl_s: float | None = None):
        self.store, self.location = store, location
        self.path = store._path(location)
        self.ttl = float(ttl_s or os.environ.get(LEASE_ENV) or 60.0)
        self.token = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.ttl,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, sort_keys=True).encode()

    def _conditional(self) -> bool:
        return type(self.store.fs).__module__.startswith("s3fs")

    def _put(self, **condition: str) -> None:
        out = self.store.fs.pipe_file(self.path, self._body(), **(condition if self._conditional() else {}))
        self.etag = (out or {}).get("ETag") if isinstance(out, dict) else None

    def acquire(self) -> None:
        fs = self.store.fs
        try:
            etag = fs.info(self.path).get("ETag")
            holder = json.loads(fs.cat_file(self.path))
        except FileNotFoundError:
            etag, holder = None, None
        if holder is not None and _alive(holder):
            raise LockBusy(f"{self.location} is held by pid {holder.get('pid')} on {holder.get('host')} "
                           f"(lease until {time.strftime('%H:%M:%S', time.localtime(holder.get('expires', 0)))})")
        try:
            if holder is None:
                self._put(mode="create")
            else:
                self._put(IfMatch=etag)
        except (FileExistsError, OSError) as err:
            raise LockBusy(f"{self.location} was taken by another run at the same moment") from err
        if not self._conditional():
            time.sleep(1.0)  # no conditional PUT: let a concurrent writer land, then see who won
            if json.loads(fs.cat_file(self.path)).get("token") != self.token:
                raise LockBusy(f"{self.location} was taken by another run at the same moment")
        self._thread = threading.Thread(target=self._renew, name="mmcurate-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._put(**({"IfMatch": self.etag} if self.etag else {}))
            except Exception as err:  # noqa: BLE001 - any failure means we can no longer prove we hold it
                self.lost = f"{self.location}: the lease could not be renewed ({type(err).__name__}: {err})"
                log.error("%s; this run stops before its next commit", self.lost)
                return

    def check(self) -> None:
        if self.lost:
            raise LockBusy(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            with contextlib.suppress(FileNotFoundError):
                self.store.fs.rm_file(self.path)


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a lock object's holder may still be writing: its lease has not expired, unless it ran on this host
    and its process is gone (a killed run on this machine is resumable at once)."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            pass
    return float(holder.get("expires", 0)) > time.time()
