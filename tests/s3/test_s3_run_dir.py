"""A run directory on S3 (``--run-dir s3://bucket/run``), against a real S3-compatible server (moto, see conftest):
the real CLI in subprocesses writes the demo's shards there byte for byte as a local run does, a SIGKILL in the
middle resumes without redoing finished blocks, a re-run of a finished run makes no request, the shards read
back through plain clients and the trainer's lookup, and no credential is written or printed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import pytest
from mmcurate.pipeline.demo import demo_site_root
from mmcurate.pipeline.storage import CACHE_ENV, cache_dir_for
from s3_helpers import KEY_ID, SECRET, free_port

pytestmark = pytest.mark.s3

PAGES = "25"  # the smallest demo site
CHUNK = "10"  # candidates per block: a dozen blocks, so a kill finds some done and some not
MEDIA_COLUMNS = ("image_url", "audio_url", "subtitles_url", "transcript_url")
MMCURATE = str(Path(sys.executable).with_name("mmcurate"))


# the demo graph (workflows/demo.yaml): two crawls, align, and an image and an audio branch with a shard set each
CRAWLS = ("pages-", "list-")
STAGES = ("pages", "list", "align", "pii", "image_text", "images", "audio_text", "audio")
SHARD_SETS = ("audio", "images")

@pytest.fixture(scope="module")
def demo(s3, tmp_path_factory):
    """How every run of this module is started: one demo port (the keys are made from its URLs), one cache."""
    root = tmp_path_factory.mktemp("s3runs")
    env = {**os.environ, **s3.env, CACHE_ENV: str(root / "cache"), "NO_ALBUMENTATIONS_UPDATE": "1",
           "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    port = str(free_port())

    def start(run_dir: str, log_name: str) -> subprocess.Popen:
        log = open(root / f"{log_name}.log", "ab")
        return subprocess.Popen(
            [MMCURATE, "demo", "--pages", PAGES, "--run-dir", run_dir, "--set", f"serve.demo_site.port={port}",
             "--set", f"pages.chunk_rows={CHUNK}", "--set", f"list.chunk_rows={CHUNK}"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def finish(run_dir: str, log_name: str) -> str:
        proc = start(run_dir, log_name)
        rc = proc.wait(timeout=900)
        text = (root / f"{log_name}.log").read_text(errors="replace")
        assert rc == 0, text[-4000:]
        return text

    def cache(url: str) -> Path:
        with mock.patch.dict(os.environ, {CACHE_ENV: env[CACHE_ENV]}):
            return cache_dir_for(url)

    return type("Demo", (), {"root": root, "env": env, "start": staticmethod(start), "finish": staticmethod(finish),
                             "cache": staticmethod(cache)})


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


def _requests(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _paths(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[1].split("?", 1)[0] for line in lines if " " in line]


def s3_shards(fs, url: str) -> dict[str, bytes]:
    """Both shard sets of the demo graph, through DIR/shards/<set>/_CURRENT.json."""
    from mmcurate.pipeline.rundir import RunDir

    found = {}
    for shard_set in SHARD_SETS:
        shards = RunDir(url).resolve("shards", shard_set)
        names = [p.rsplit("/", 1)[1] for p in fs.ls(shards.split("://", 1)[1], detail=False)]
        found.update({f"{shard_set}/{n}": fs.cat_file(f"{shards}/{n}") for n in sorted(names)
                      if n.endswith((".tar", ".parquet", ".json"))})
    return found


def local_shards(run: Path) -> dict[str, bytes]:
    return {f"{shard_set}/{p.name}": p.read_bytes() for shard_set in SHARD_SETS
            for p in sorted((run / "shards" / shard_set).iterdir()) if p.suffix in (".tar", ".parquet", ".json")}


@pytest.fixture(scope="module")
def local_run(demo) -> Path:
    run = demo.root / "local"
    demo.finish(str(run), "local")
    return run


@pytest.fixture(scope="module")
def killed_run(s3, demo):
    """An S3 run SIGKILLed (process group: server and Ray with it) once some of its crawl blocks were published,
    then run again to the end. Returns the URL, the blocks done at the kill, and the server's requests since."""
    import fsspec
    import pyarrow.parquet as pq

    fs = fsspec.filesystem("s3", use_listings_cache=False)
    url = s3.url("killed")
    prefix = f"{s3.bucket}/killed/.progress"

    def done_blocks() -> dict[str, str]:
        found = fs.find(prefix) if fs.exists(prefix) else []
        return {p.split("/")[-2]: p.split("/")[3] for p in found
                if p.endswith("/_DONE") and p.split("/")[3].startswith(CRAWLS) and "/blocks/" in p}

    proc = demo.start(url, "killed-1")
    deadline = time.monotonic() + 600
    while not done_blocks():
        assert proc.poll() is None, (demo.root / "killed-1.log").read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, "no crawl block was ever published"
        time.sleep(0.2)
    _kill_group(proc)
    assert not fs.exists(f"{s3.bucket}/killed/shards/images/_CURRENT.json")  # it was killed before the end
    finished = done_blocks()
    media: dict[str, set[str]] = {"finished": set(), "pending": set()}
    progress = {p.split("/")[3] for p in fs.find(prefix)}
    for stage_progress in sorted(progress):
        if not stage_progress.startswith(CRAWLS):
            continue
        for chunk in fs.find(f"{prefix}/{stage_progress}/inputs"):
            block = chunk.rsplit("/", 1)[1][: -len(".parquet")]
            rows = pq.read_table(io.BytesIO(fs.cat_file(chunk))).to_pylist()
            paths = {urlsplit(row[c]).path for row in rows for c in MEDIA_COLUMNS if row.get(c)}
            media["finished" if block in finished else "pending"].update(paths)
    access_log = demo_site_root(demo.cache(url)) / "access.log"
    seen = len(_requests(access_log))
    output = demo.finish(url, "killed-2")
    return url, finished, media, _requests(access_log)[seen:], output


@pytest.mark.timeout(900)
def test_a_demo_killed_during_an_s3_run_resumes_to_the_shards_of_a_local_run_byte_for_byte(
        s3, s3fs_client, demo, local_run, killed_run):
    url, finished, media, again, output = killed_run
    assert finished, "the kill came before any block was done"
    first = (demo.root / "killed-1.log").read_text(errors="replace").split("stage pages: running (fingerprint ")[1][:16]
    assert f"stage pages: running (fingerprint {first})" in output, "the crawl's code changed between the two runs"
    assert s3_shards(s3fs_client, url) == local_shards(local_run)
    # finished blocks were not redone: none of their media was asked for again (only media of blocks unfinished)
    refetched = [p for p in _paths(again) if p in media["finished"] and p not in media["pending"]]
    assert not refetched, f"media of blocks finished before the kill fetched again: {refetched[:5]}"
    assert "GET /index.html" not in again  # the saved BFS level (local cache) was replayed, not fetched
    assert "done by an earlier run" in output
    # nothing of the run is left in progress; the manifest and stats are objects in the run directory
    assert not [p for p in s3fs_client.find(f"{s3.bucket}/killed") if "/.progress/" in p]
    manifest = json.loads(s3fs_client.cat_file(f"{s3.bucket}/killed/manifest.json"))
    assert [s["name"] for s in manifest["stages"]] == list(STAGES)
    assert json.loads(s3fs_client.cat_file(f"{s3.bucket}/killed/stats.json"))["images"]["kept"] > 0
    assert s3fs_client.exists(f"{s3.bucket}/killed/logs/run.log")


@pytest.mark.timeout(300)
def test_a_rerun_on_a_finished_s3_run_dir_reuses_every_stage_and_makes_no_request(s3, s3fs_client, demo, killed_run):
    url = killed_run[0]
    access_log = demo_site_root(demo.cache(url)) / "access.log"
    before = len(_requests(access_log))
    shards = s3_shards(s3fs_client, url)
    demo.finish(url, "rerun")
    assert len(_requests(access_log)) == before
    manifest = json.loads(s3fs_client.cat_file(f"{s3.bucket}/killed/manifest.json"))
    assert [s["status"] for s in manifest["stages"]] == ["reused"] * len(STAGES)
    assert s3_shards(s3fs_client, url) == shards


@pytest.mark.timeout(300)
def test_shards_on_s3_read_back_through_webdataset_fsspec_and_the_trainer_lookup(s3, s3fs_client, killed_run, demo):
    import webdataset as wds
    from mmcurate.pipeline.rundir import RunDir
    from mmcurate.pipeline.train.shards import expand_shards, iter_shard, resolve_local

    url = killed_run[0]
    stats = json.loads(s3fs_client.cat_file(f"{s3.bucket}/killed/stats.json"))
    # what DIR/shards/images/_CURRENT.json names, through DIR/images's pointer
    generation = RunDir(url).resolve("shards", "images")
    assert "/.generations/images/" in generation
    tars = sorted(f"s3://{p}" for p in s3fs_client.glob(f"{generation.split('://', 1)[1]}/*.tar"))
    # a plain WebDataset reader, streaming each shard through a pipe (as `pipe:aws s3 cp URL -` would)
    cat = f"{sys.executable} -c 'import fsspec,shutil,sys; shutil.copyfileobj(fsspec.open(sys.argv[1]).open(), sys.stdout.buffer)'"
    samples = list(wds.WebDataset([f"pipe:{cat} {t}" for t in tars], shardshuffle=False))
    assert len(samples) == stats["images"]["kept"]
    assert [s["__key__"] for s in samples] == sorted(s["__key__"] for s in samples)
    # the trainer: DIR/shards/*.tar names the shards, read through the generation resolved at start
    names = expand_shards(f"{url}/shards/images/*.tar")
    assert names == [f"{url}/shards/images/{t.rsplit('/', 1)[1]}" for t in tars]
    assert [resolve_local(n) for n in names] == tars
    assert sum(1 for n in names for _ in iter_shard(resolve_local(n))) == stats["images"]["kept"]
    # explain works on the S3 run directory too
    key = samples[0]["__key__"]
    out = subprocess.run([MMCURATE, "explain", url, key], env=demo.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "[shards] written" in out.stdout, out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_no_credential_is_written_logged_or_printed(s3, s3fs_client, demo, killed_run):
    secrets = (SECRET.encode(), KEY_ID.encode())
    leaked = [p for p in s3fs_client.find(s3.bucket) if any(s in s3fs_client.cat_file(p) for s in secrets)]
    assert not leaked, leaked
    for path in [*demo.root.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path
    assert not any(s.decode() in killed_run[4] for s in secrets)


@pytest.mark.timeout(300)
def test_a_second_run_on_an_s3_run_dir_in_use_is_refused(s3, demo):
    from mmcurate.pipeline.rundir import RunDir

    url = s3.url("busy")
    with RunDir(url).locked():
        out = subprocess.run([MMCURATE, "demo", "--pages", PAGES, "--run-dir", url], env=demo.env,
                             capture_output=True, text=True, timeout=240)
    assert out.returncode == 1 and "in use by another mmcurate run" in out.stderr, out.stderr[-2000:]
