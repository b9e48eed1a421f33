"""The user's path, end to end: a non-editable install in a fresh venv, the ``mmcurate demo`` command run from
another directory with its own server and its own Ray per invocation, SIGKILLed to its process group at points
spread over the crawl, align, shard and the commit, and run again as a user would.

Kill points are printed with their delays. The delays are drawn from ``MMCURATE_KILL_SEED`` (default: a fresh
seed, printed), so a failing sequence can be replayed: ``MMCURATE_KILL_SEED=<seed> pytest tests/e2e -s``;
``MMCURATE_KILL_POINTS=align,shard`` runs only the points named.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PAGES = 40  # the smallest site that still has every failure mode
CHUNK_ROWS = 20  # two URL-list chunks and several media chunks, so a kill can land between and inside them
SHARD_SAMPLES = 40  # several shards
KILL_SEED = int(os.environ.get("MMCURATE_KILL_SEED", random.randrange(1_000_000)))


@dataclass(frozen=True)
class KillPoint:
    name: str
    reached: Callable[[Path], bool] | None  # watched from outside; None: the run kills itself (MMCURATE_KILL_AT)
    kill_at: str | None = None

    def delay(self) -> float:
        return random.Random(f"{KILL_SEED}-{self.name}").uniform(0.0, 1.5) if self.reached else 0.0


def _any(run: Path, pattern: str) -> bool:
    return any(run.glob(pattern))


# In pipeline order: the run directory is killed at each point in turn, restarted each time, and only then allowed
# to finish, so every resume starts from the state the kill before it left.
# The demo is a graph (workflows/demo.yaml): the page crawl, then the URL-list crawl, then align over both, then
# the image branch (select, shard) and the audio branch.
KILL_POINTS = [
    KillPoint("crawl-bfs-level", lambda run: _any(run, ".progress/pages-*/pages/level-001.parquet")),
    # the BFS levels are all fetched before the first block of page media
    KillPoint("media-block", lambda run: _any(run, ".progress/pages-*/blocks/level-*")),
    KillPoint("commit-crawl-after-link-swap", None, "publish:pages:after"),
    KillPoint("crawl-url-list-block", lambda run: _any(run, ".progress/list-*/blocks/.list0-*.tmp-*")),
    KillPoint("commit-align-before-link-swap", None, "publish:align:before"),
    # inside the image branch's sink, once its first key ranges are published and before the rest are (a delay
    # after seeing a partition raced the sink's commit on a quiet machine)
    KillPoint("shard", None, "sink:images:partition"),
]
CRAWLS = ("pages", "list")
STAGES = ("pages", "list", "align", "pii", "image_text", "images", "audio_text", "audio")
CHOSEN = os.environ.get("MMCURATE_KILL_POINTS")  # e.g. "align,shard": only these, still in pipeline order


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install .`` (not editable) into a fresh venv; the heavy dependencies come from this interpreter's
    site-packages through a .pth line, so the test needs no network and no second 5 GB install. The wheel is
    built by this interpreter (its setuptools is the one pyproject.toml asks for; a fresh venv's is older)."""
    wheels = tmp_path_factory.mktemp("wheel")
    # build from a clean copy: setuptools never empties an existing build/, so stale modules would ride along
    source = tmp_path_factory.mktemp("source") / "mmcurate"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs",
                                                                "__pycache__", ".pytest_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, cwd=wheels,
    )
    (wheel,) = wheels.glob("mmcurate-*.whl")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.check_output(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    (site / "_parent_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON"))}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# One port for every run of this module: the demo derives its port from the run directory, and the shards hold
# the URLs they were crawled from, so comparing runs in different directories needs them to serve the same URLs.
PORT = _free_port()


def _demo_command(venv: Path, run: Path, *extra: str) -> list[str]:
    return [str(venv / "bin" / "mmcurate"), "demo", "--run-dir", str(run), "--pages", str(PAGES),
            "--set", f"serve.demo_site.port={PORT}",
            *[f"--set={crawl}.chunk_rows={CHUNK_ROWS}" for crawl in CRAWLS],
            *[f"--set={sink}.samples_per_shard={SHARD_SAMPLES}" for sink in ("images", "audio")], *extra]


def _run_demo(venv: Path, run: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(run.parent / f"{run.name}.log", "ab")
    return subprocess.Popen(_demo_command(venv, run, *extra), cwd=cwd, env=env or _env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _tail(run: Path) -> str:
    lines = (run.parent / f"{run.name}.log").read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines[-80:] if "logging_progress" not in line)


def _finish(proc: subprocess.Popen, run: Path) -> None:
    assert proc.wait(timeout=900) == 0, _tail(run)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI's process group, then wait until nothing of its session (Ray included) is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        if not alive.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of the killed run outlived it: {alive.split()}")


def shard_files(run: Path) -> dict[str, bytes]:
    """Both shard sets of the demo: shards/images/ and shards/audio/."""
    return {f"{folder.name}/{p.name}": p.read_bytes() for folder in sorted((run / "shards").iterdir())
            for p in sorted(folder.iterdir()) if p.suffix in (".tar", ".parquet", ".json")}


def requests(run: Path) -> list[str]:
    log = run.parent / f"{run.name}.site" / "access.log"  # the demo builds its site beside the run dir
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("elsewhere")  # not the repository: the installed package must stand alone


@pytest.fixture(scope="module")
def reference(installed, elsewhere) -> Path:
    run = elsewhere / "reference"
    _finish(_run_demo(installed, run, elsewhere), run)
    return run


def test_the_wheel_installs_under_one_namespace_and_carries_the_demo(installed, elsewhere):
    python = installed / "bin" / "python"
    probe = ("import importlib.util as u, mmcurate.stages, mmcurate.pipeline, mmcurate.schemas;"
             "print([n for n in ('pipeline', 'stages', 'schemas') if u.find_spec(n)]);"
             "print(mmcurate.stages.__file__)")
    found, where = subprocess.check_output([python, "-c", probe], cwd=elsewhere, env=_env(), text=True).splitlines()
    assert found == "[]"  # no top-level pipeline / stages / schemas module
    assert str(installed) in where and str(REPO) not in where
    site = Path(where).parents[2]  # site-packages/mmcurate/stages/__init__.py
    assert (site / "mmcurate" / "workflows" / "demo.yaml").is_file()
    speech = site / "mmcurate" / "pipeline" / "demo" / "assets" / "speech"  # package data of the demo's assets
    assert (speech / "speech.json").is_file() and len(list(speech.glob("*.flac"))) == 15
    assert not any((site / name).exists() for name in ("pipeline", "stages", "schemas"))


def test_the_demo_runs_from_another_directory_and_a_rerun_makes_no_request(installed, reference, elsewhere):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ran"] * len(STAGES)
    assert len(shard_files(reference)) >= 6
    before = len(requests(reference))
    _finish(_run_demo(installed, reference, elsewhere), reference)
    assert len(requests(reference)) == before
    manifest = json.loads((reference / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["reused"] * len(STAGES)


def _kill_at(point: KillPoint, installed: Path, run: Path, elsewhere: Path) -> None:
    print(f"\nkill point {point.name}: seed {KILL_SEED}, delay {point.delay():.2f} s, kill_at {point.kill_at}")
    env = {**_env(), "MMCURATE_KILL_AT": point.kill_at} if point.kill_at else None
    proc = _run_demo(installed, run, elsewhere, env=env)
    if point.reached is None:
        assert proc.wait(timeout=900) == -signal.SIGKILL, _tail(run)
        _kill_group(proc)
        return
    deadline = time.monotonic() + 600
    while not point.reached(run):
        assert proc.poll() is None, f"the run ended before {point.name}:\n{_tail(run)}"
        assert time.monotonic() < deadline, f"{point.name} never reached"
        time.sleep(0.02)
    time.sleep(point.delay())
    assert proc.poll() is None, f"the run ended before the kill at {point.name}"
    _kill_group(proc)


def _committed(run: Path) -> set[str]:
    return {stage for stage in STAGES if (run / stage / "_SUCCESS.json").exists()}


def _block_media(run: Path) -> tuple[set[str], set[str]]:
    """Paths of the media candidates in crawl blocks that a killed run finished, and in those it did not."""
    import pyarrow.parquet as pq

    done = {d.name.rsplit("-", 1)[0] for crawl in CRAWLS for d in run.glob(f".progress/{crawl}-*/blocks/*")
            if not d.name.startswith(".")}
    finished, pending = set(), set()
    for chunk in (c for crawl in CRAWLS for c in run.glob(f".work/{crawl}-*/candidates/*/*.parquet")):
        rows = pq.read_table(chunk).to_pylist()
        paths = {urlsplit(row[c]).path for row in rows for c in MEDIA_COLUMNS if row.get(c)}
        (finished if chunk.stem in done else pending).update(paths)
    return finished, pending


MEDIA_COLUMNS = ("image_url", "audio_url", "subtitles_url", "transcript_url")


def _check_resumed_work(run: Path, committed: set[str], levels: list[str], blocks: tuple[set[str], set[str]],
                        again: list[str]) -> None:
    """What a run started after a kill asked the server for: nothing once the crawl was committed, never a BFS
    level that was saved, and no media of a finished block (only media of blocks in flight or not started)."""
    if set(CRAWLS) <= committed:
        assert again == [], f"a committed crawl was fetched again: {again[:5]}"
    if "level-000.parquet" in levels:
        assert "GET /index.html" not in again  # the saved BFS level is replayed, not fetched
    finished, pending = blocks
    paths = [line.split(" ", 1)[1].split("?", 1)[0] for line in again if " " in line]
    refetched = [p for p in paths if p in finished and p not in pending]
    assert not refetched, f"media of finished blocks fetched again: {refetched[:5]}"
    media_again = [p for p in paths if p in pending]
    print(f"  resumed: {len(media_again)} media requests, all of blocks unfinished at the kill "
          f"({len(finished)} media paths in finished blocks, none asked for again)")


def test_a_demo_killed_again_and_again_resumes_to_the_same_shards(installed, reference, elsewhere):
    run = elsewhere / "killed"
    points = [p for p in KILL_POINTS if not CHOSEN or p.name in CHOSEN.split(",")]
    assert points, f"MMCURATE_KILL_POINTS={CHOSEN} names none of {[p.name for p in KILL_POINTS]}"
    for point in [*points, None]:  # None: the last run, left to finish
        committed, seen = _committed(run), len(requests(run))
        levels = sorted(p.name for p in run.glob(".progress/pages-*/pages/level-*.parquet"))
        blocks = _block_media(run)
        if point is None:
            _finish(_run_demo(installed, run, elsewhere), run)
        else:
            _kill_at(point, installed, run, elsewhere)
            assert not any(run.glob("shards/*/shard-000000.tar"))
        _check_resumed_work(run, committed, levels, blocks, requests(run)[seen:])
    assert shard_files(run) == shard_files(reference)
    assert not any((run / ".progress").glob("*")) and not any((run / ".work").glob("*"))
    statuses = {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}
    assert all(statuses[stage] == "reused" for stage in committed), statuses


def test_a_different_seed_on_the_same_run_dir_runs_again(installed, reference, elsewhere, tmp_path):
    """Seed 1 on a finished seed-0 run dir must not reuse anything: its crawl starts under a new fingerprint (the
    run is stopped there; what follows a fresh crawl is what the kill tests above already cover)."""
    run = tmp_path / "reseeded"
    shutil.copytree(reference, run, symlinks=True)
    old = {s["name"]: s["fingerprint"] for s in json.loads((run / "manifest.json").read_text())["stages"]}
    proc = _run_demo(installed, run, elsewhere, "--seed", "1")
    log = run.parent / f"{run.name}.log"
    deadline = time.monotonic() + 600
    while "stage pages: running (fingerprint" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the seed-1 run ended without running the crawl:\n{_tail(run)}"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _kill_group(proc)
    started = log.read_text(errors="replace").split("stage pages: running (fingerprint ")[1][:16]
    assert started != old["pages"]
    assert "already done" not in log.read_text(errors="replace")
