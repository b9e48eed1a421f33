"""A real kill from outside: SIGKILL the ``mmcurate train`` driver's process group mid-epoch, then run the same
command again and check with the ledger that the interrupted epoch trained on each of its keys exactly once.

The shards sit where the pipeline publishes them: ``shards`` is a link to a generation directory holding a
``_READERS.lock``. While the driver runs, a second trainer on the run directory fails at once and the generation
cannot be locked exclusively; the kill frees both locks, and the link is swapped to a republished, identical
generation before the resume, which then reads that one.

The driver runs as a subprocess that joins the test session's Ray cluster, so the kill takes down the driver (and
with it Ray's job: its Train controller and worker actors), not a fault hook inside the training loop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmcurate.pipeline.train.ledger import committed
from mmcurate.pipeline.train.locks import READERS_LOCK
from mmcurate.pipeline.train.shards import iter_shard
from train_helpers import exclusive_from_another_process, tiny_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def read_jsonl(path: Path) -> list[dict]:
    """Complete lines only: a file being appended to may end in a partial line."""
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def wait_for(what: str, predicate, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) while waiting for {what}\n{_tail(log)}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{_tail(log)}")


def _tail(log: Path | None, n: int = 20000) -> str:
    return log.read_text(errors="replace")[-n:] if log is not None and log.is_file() else ""


def mid_epoch_after_checkpoint(train_dir: Path) -> dict | None:
    """The first attempt's first checkpoint when it is mid-epoch and every rank has already consumed batches past
    it (work the kill will throw away), else None."""
    attempts = read_jsonl(train_dir / "attempts.jsonl")
    ckpts = read_jsonl(train_dir / "checkpoints.jsonl")
    if not attempts or not ckpts:
        return None
    first = ckpts[0]
    assert first["remaining"] > 0, f"the first checkpoint is at the epoch's end, not mid-epoch: {first}"
    ranks = sorted((train_dir / "ledger" / attempts[0]["attempt"]).glob("rank-*.jsonl"))
    if len(ranks) != 2:
        return None
    for path in ranks:
        if not any(line.get("step", 0) > first["step"] for line in read_jsonl(path)):
            return None
    return first


def test_sigkill_of_the_driver_mid_epoch_resumes_with_each_key_once(ray_session, shape_shards, tmp_path):
    # 2048 samples, 2 workers x 16 = 64 steps in the one epoch; a checkpoint every 8 steps
    gen1, gen2 = tmp_path / "gen1" / "shards", tmp_path / "gen2" / "shards"
    for gen in (gen1, gen2):  # the pipeline's layout: a link to the current generation, each with its lock file
        shutil.copytree(Path(shape_shards["train"][0]).parent, gen)
        (gen / READERS_LOCK).touch()
    link = tmp_path / "shards"
    link.symlink_to(gen1)
    cfg = tiny_config(
        str(link / "*.tar"), epochs=1,
        data={"batch_size": 16, "loader_workers": 1, "shuffle_block": 256},
        checkpoint={"every_n_steps": 8, "keep": 2},
    )
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    train_dir = run_dir / "train"
    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "mmcurate.pipeline.cli", "train", str(config_path), "--run-dir", str(run_dir),
               "--ray-address", address]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    total_cpus = ray_session.cluster_resources().get("CPU", 0)

    def start(log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    # 1. first run: SIGKILL the driver's whole process group once a mid-epoch checkpoint is committed
    log1 = tmp_path / "train-killed.log"
    proc = start(log1)
    try:
        # once it has recorded its shards the driver holds the run directory and the generation it reads
        wait_for("the shard record", lambda: (train_dir / "shards-train.json").is_file(), 300, proc, log1)
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{train_dir / '.lock'} is locked by another trainer (pid {proc.pid} " in second.stderr, second.stderr
        assert exclusive_from_another_process(gen1 / READERS_LOCK) == "blocked"
        checkpoint = wait_for("a mid-epoch checkpoint", lambda: mid_epoch_after_checkpoint(train_dir), 300, proc, log1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # with its driver gone, Ray ends the job: the Train workers die and give their CPUs back
    wait_for("the killed job's Train workers to exit",
             lambda: ray_session.available_resources().get("CPU", 0) >= total_cpus, 120, log=log1)
    killed_ckpts = read_jsonl(train_dir / "checkpoints.jsonl")
    assert all(c["remaining"] > 0 for c in killed_ckpts), killed_ckpts  # the kill landed mid-epoch
    assert exclusive_from_another_process(gen1 / READERS_LOCK) == "acquired"  # the kernel dropped the reader lock
    swap = tmp_path / "shards.new"
    swap.symlink_to(gen2)
    os.replace(swap, link)  # the pipeline republished the same shards; the old generation may now go

    # 2. the same command again runs to completion
    log2 = tmp_path / "train-resumed.log"
    proc = start(log2)
    try:
        rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail(f"the resumed run did not finish\n{_tail(log2)}")
    assert rc == 0, f"resumed run failed ({rc})\n{_tail(log2)}\n--- killed run ---\n{_tail(log1)}"
    recorded = json.loads((train_dir / "shards-train.json").read_text())["shards"]
    assert all(s["url"].startswith(str(link)) and s["path"].startswith(str(gen2)) for s in recorded), recorded

    # the resumed attempt started from a mid-epoch checkpoint of the killed one, not from scratch
    attempts = read_jsonl(train_dir / "attempts.jsonl")
    assert len(attempts) == 2, attempts
    killed, resumed = attempts
    assert killed["resumed_from"] is None and killed["step"] == 0
    by_id = {c["checkpoint_id"]: c for c in killed_ckpts}
    assert resumed["resumed_from"] in by_id, (resumed, killed_ckpts)
    origin = by_id[resumed["resumed_from"]]
    assert resumed["epoch"] == 0 and resumed["step"] == origin["step"] >= checkpoint["step"] > 0
    expected = sorted(s["__key__"] for p in shape_shards["train"] for s in iter_shard(p))
    assert 0 < origin["remaining"] < len(expected)
    # the killed attempt had trained past that checkpoint: work the kill threw away and the resume redid
    lost = [line for p in (train_dir / "ledger" / killed["attempt"]).glob("rank-*.jsonl")
            for line in read_jsonl(p) if line.get("step", 0) > origin["step"]]
    assert lost

    # every key of the interrupted epoch trained exactly once, across the two attempts together
    history = committed(train_dir)
    assert sorted(history) == [0]
    trained = history[0]["trained"]
    assert len(trained) == len(set(trained)), "a key trained twice"
    assert sorted(trained) == expected
    assert not history[0]["skipped"]
    assert (train_dir / "final" / "open_clip_pytorch_model.bin").is_file()
