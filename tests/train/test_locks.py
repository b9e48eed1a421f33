"""The trainer's file locks: one trainer per run directory, and shared reader locks on the shard generations it
reads. Lock attempts from outside run in a separate process, as the pipeline's would."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmcurate.pipeline.train import locks
from mmcurate.pipeline.train.cli import add_train_parser, run_train_command
from mmcurate.pipeline.train.locks import READERS_LOCK, RunDirLocked, reader_locks, run_lock
from train_helpers import exclusive_from_another_process, tiny_config

def generation(root: Path, name: str, *, lock: bool = True) -> Path:
    d = root / name / "shards"
    d.mkdir(parents=True)
    (d / "shard-000000.tar").write_bytes(b"x")
    (d / "shard-000001.tar").write_bytes(b"y")
    if lock:
        (d / READERS_LOCK).touch()
    return d


def test_a_reader_lock_blocks_an_exclusive_lock_until_released(tmp_path):
    gen_a, gen_b = generation(tmp_path, "a"), generation(tmp_path, "b")
    plain = generation(tmp_path, "c", lock=False)
    paths = [str(d / f"shard-00000{i}.tar") for d in (gen_a, gen_b, plain) for i in (0, 1)]
    with reader_locks(paths + ["s3://bucket/shard-000000.tar"]) as held:
        assert held == [str(gen_a / READERS_LOCK), str(gen_b / READERS_LOCK)]  # one per directory, none invented
        assert exclusive_from_another_process(gen_a / READERS_LOCK) == "blocked"
        assert exclusive_from_another_process(gen_b / READERS_LOCK) == "blocked"
        # shared: a second reader is not kept out
        with reader_locks(paths[:1]):
            pass
    assert exclusive_from_another_process(gen_a / READERS_LOCK) == "acquired"
    assert exclusive_from_another_process(gen_b / READERS_LOCK) == "acquired"
    assert not (plain / READERS_LOCK).exists()


def test_a_generation_deleted_while_being_locked_is_an_error(tmp_path, monkeypatch):
    gen = generation(tmp_path, "a")
    real = locks._lock_shared

    def deleted_first(fd, lock, wait_s):  # the pipeline's delete lands between our open and our flock
        os.unlink(lock)
        real(fd, lock, wait_s)

    monkeypatch.setattr(locks, "_lock_shared", deleted_first)
    with pytest.raises(RuntimeError, match="was deleted while the trainer was locking it"):
        with reader_locks([str(gen / "shard-000000.tar")]):
            pass


@pytest.mark.timeout(60)  # a lock that waited instead of failing would hang here
def test_a_second_trainer_on_a_run_dir_fails_at_once_naming_the_path_and_the_holder(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    with run_lock(train_dir):
        with pytest.raises(RunDirLocked) as err:
            with run_lock(train_dir):
                pass
    message = str(err.value)
    assert str(train_dir / ".lock") in message and f"pid {os.getpid()}" in message and "--run-dir" in message
    with run_lock(train_dir):  # released on exit
        pass


def test_the_cli_refuses_a_locked_run_dir_before_starting_anything(tmp_path, caplog):
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(str(tmp_path / "no-shards-needed-*.tar"))))
    parser = argparse.ArgumentParser(prog="mmcurate")
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", str(config_path), "--run-dir", str(tmp_path / "run")])
    (tmp_path / "run" / "train").mkdir(parents=True)
    with run_lock(tmp_path / "run" / "train"), caplog.at_level(logging.ERROR):
        assert run_train_command(args) == 2
    assert any("is locked by another trainer" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "run" / "train" / "config.yaml").exists()  # the holder's files are left alone


HOLD = """
import sys, time
from mmcurate.pipeline.train.locks import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_kernel_releases_the_run_lock_of_a_killed_trainer(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLocked, match=f"pid {proc.pid} "):
            with run_lock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with run_lock(tmp_path):  # no stale lock: the file stays, the flock went with the process
        pass
