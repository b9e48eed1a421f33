"""Content digests and true counts of shards: a resume is refused when recorded shards hold other content, a
new generation with the same content resumes, and samples past a stale count are trained or reported."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import fsspec
import open_clip
import pytest
import yaml

from mmcurate.pipeline.train import manifest
from mmcurate.pipeline.train.cli import add_train_parser, run_train_command
from mmcurate.pipeline.train.data import SHARD_EXTRA, Decoder, ShardStream, make_loader
from mmcurate.pipeline.train.manifest import ShardsChanged, describe, record
from mmcurate.pipeline.train.order import assign
from mmcurate.pipeline.train.shards import count_all, iter_shard, resolve_local
from mmcurate.pipeline.train.synthetic import records
from train_helpers import tiny_config, write_synthetic


def shards(tmp_path: Path, name: str, n: int = 96, *, seed: int = 7, per_shard: int = 32) -> list[str]:
    return write_synthetic(tmp_path / name, n, seed=seed, per_shard=per_shard)


def keys_of(path: str) -> list[str]:
    return [s["__key__"] for s in iter_shard(path)]


def test_the_index_digest_follows_the_content_not_the_file(tmp_path):
    a = shards(tmp_path, "a")
    same = shards(tmp_path, "same")  # the shard writer is deterministic: identical records, identical shards
    other = shards(tmp_path, "other", seed=8)
    entry = describe(a[0], a[0])
    assert entry.source == "index" and entry.count == 32
    assert describe(same[0], same[0]).digest == entry.digest
    assert describe(other[0], other[0]).digest != entry.digest
    assert [describe(p, p).digest for p in a[1:]] != [entry.digest] * 2  # shards differ from each other


def test_a_shard_without_an_index_is_hashed_whole_and_rehashed_only_after_a_write(tmp_path, monkeypatch):
    path = Path(shards(tmp_path, "a")[0])
    path.with_suffix(".parquet").unlink()
    entry = describe(str(path), str(path))
    assert entry.source == "bytes" and entry.count == 32
    assert entry.digest == hashlib.sha256(path.read_bytes()).hexdigest()

    passes = []
    real = manifest._read_all
    monkeypatch.setattr(manifest, "_read_all", lambda p: passes.append(p) or real(p))
    assert describe(str(path), str(path), entry) == entry and passes == []  # unchanged file: not read again
    data = bytearray(path.read_bytes())
    at = data.index(b"a ", data.index(b".txt"))  # a caption byte: same size, same sample count, other content
    data[at] = ord("A")
    path.write_bytes(bytes(data))
    changed = describe(str(path), str(path), entry)
    assert passes == [str(path)] and changed.count == 32 and changed.digest != entry.digest


def test_a_remote_shard_with_stats_only_gets_a_sampled_digest(tmp_path):
    local = Path(shards(tmp_path, "a", 32)[0])
    fs = fsspec.filesystem("memory")
    data = local.read_bytes()
    fs.pipe("/mmcurate-manifest/s-000000.tar", data)
    fs.pipe("/mmcurate-manifest/s-000000_stats.json", json.dumps({"samples": 32, "bytes": len(data)}).encode())
    url = "memory://mmcurate-manifest/s-000000.tar"
    entry = describe(url, url)
    assert entry.source == "sampled" and entry.count == 32
    fs.pipe("/mmcurate-manifest/s-000000.tar", b"\0" + data[1:])  # one byte in the head differs
    assert describe(url, url).digest != entry.digest
    # stats whose byte size does not match the tar are not believed: the tar is read
    fs.pipe("/mmcurate-manifest/s-000000_stats.json", json.dumps({"samples": 30, "bytes": 1}).encode())
    fs.pipe("/mmcurate-manifest/s-000000.tar", data)
    reread = describe(url, url)
    assert reread.source == "bytes" and reread.count == 32


def test_resuming_on_rewritten_shards_is_refused_naming_them(tmp_path, caplog):
    paths = shards(tmp_path, "shards")
    train_dir = tmp_path / "run" / "train"
    train_dir.mkdir(parents=True)
    first = record(train_dir, "train", paths, paths, resuming=False)
    saved = json.loads((train_dir / "shards-train.json").read_text())["shards"]
    assert [s["digest"] for s in saved] == [e.digest for e in first] and all(s["count"] == 32 for s in saved)

    # rewritten under the same names with other samples
    shutil.rmtree(tmp_path / "shards")
    write_synthetic(tmp_path / "shards", 96, seed=99, per_shard=32)
    with pytest.raises(ShardsChanged) as err:
        record(train_dir, "train", paths, paths, resuming=True)
    message = str(err.value)
    assert all(p in message for p in paths) and "3 shard(s)" in message
    assert "new run directory" in message and "restore the shards" in message
    assert json.loads((train_dir / "shards-train.json").read_text())["shards"] == saved  # the record is kept

    # no checkpoint yet: nothing would mix, so the new content is recorded with a warning
    with caplog.at_level(logging.WARNING):
        again = record(train_dir, "train", paths, paths, resuming=False)
    assert [e.digest for e in again] != [e.digest for e in first]
    assert any("hold new content" in r.getMessage() for r in caplog.records)


def test_a_new_generation_with_the_same_content_resumes_and_is_read_through_its_real_path(tmp_path):
    gen1 = Path(shards(tmp_path, "gen1/shards")[0]).parent
    shutil.copytree(gen1, tmp_path / "gen2" / "shards")  # the pipeline republished identical shards
    link = tmp_path / "run-shards"
    link.symlink_to(gen1)
    urls = sorted(str(p) for p in link.glob("*.tar"))
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    first = record(train_dir, "train", urls, [resolve_local(u) for u in urls], resuming=False)
    assert [e.path for e in first] == [str(gen1 / Path(u).name) for u in urls]

    tmp = tmp_path / "run-shards.new"
    tmp.symlink_to(tmp_path / "gen2" / "shards")
    os.replace(tmp, link)
    resumed = record(train_dir, "train", urls, [resolve_local(u) for u in urls], resuming=True)
    assert [e.digest for e in resumed] == [e.digest for e in first]
    assert all(e.path.startswith(str(tmp_path / "gen2")) for e in resumed)
    assert resolve_local(f"file://{urls[0]}") == resumed[0].path


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(open_clip.SimpleTokenizer(context_length=16), open_clip.image_transform(32, is_train=False), None)


def stream(paths, counts, decoder, *, world, workers):
    batches = []
    for rank, share in enumerate(assign([(0, sum(counts))], world, workers)):
        ds = ShardStream(paths, counts, assignment=share, consumer_base=rank * max(1, workers), seed=3, epoch=0,
                         block=40, shuffle_shards=True, batch_size=8, decoder=decoder)
        batches += list(make_loader(ds, loader_workers=workers, prefetch_batches=2, pin_memory=False))
    return batches


def test_samples_past_a_stale_index_and_stats_enter_the_epoch_order(tmp_path, decoder, caplog):
    grown = Path(shards(tmp_path, "grown", 70, per_shard=70)[0])
    stale = Path(shards(tmp_path, "stale", 64, per_shard=64)[0])  # the same first 64 records
    for suffix in (".parquet", "_stats.json"):  # index and stats written before 6 samples were appended
        shutil.copy(stale.with_name(stale.stem + suffix), grown.with_name(grown.stem + suffix))
    with caplog.at_level(logging.WARNING):
        counts = count_all([str(grown)])
    assert counts == [70]
    assert any("holds 70 samples" in r.getMessage() for r in caplog.records)
    keys = [k for b in stream([str(grown)], counts, decoder, world=2, workers=1) for k in b["keys"]]
    assert sorted(keys) == sorted(r["key"] for r in records(70, seed=7))


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2)])
def test_samples_past_a_count_read_from_stats_are_reported_once_in_the_batch_of_the_last_counted_one(
    tmp_path, decoder, caplog, world, workers
):
    fs = fsspec.filesystem("memory")
    root = f"/mmcurate-extra-{world}-{workers}"
    urls = []
    for i, path in enumerate(shards(tmp_path, "s", 100, per_shard=50)):
        fs.pipe(f"{root}/s-{i:06d}.tar", Path(path).read_bytes())
        # a stale stats file without a byte size: nothing cheap contradicts it
        fs.pipe(f"{root}/s-{i:06d}_stats.json", json.dumps({"samples": 45}).encode())
        urls.append(f"memory://{root}/s-{i:06d}.tar")
    counts = count_all(urls)
    assert counts == [45, 45]
    with caplog.at_level(logging.WARNING, logger="mmcurate.pipeline.train.data"):
        batches = stream(urls, counts, decoder, world=world, workers=workers)
    trained = [k for b in batches for k in b["keys"]]
    extra = [k for b in batches for k, reason in b["skipped"] if reason == SHARD_EXTRA]
    all_keys = [keys_of(u) for u in urls]
    assert sorted(trained) == sorted(k for ks in all_keys for k in ks[:45])
    assert sorted(extra) == sorted(k for ks in all_keys for k in ks[45:])  # each once, none trained
    for ks in all_keys:  # reported in the batch that consumes the shard's last counted position
        batch = next(b for b in batches if [ks[45], SHARD_EXTRA] in b["skipped"])
        assert ks[44] in batch["keys"]
    if workers == 0:  # loader processes log where caplog cannot see
        assert any("recorded count, not trained #1" in r.getMessage() for r in caplog.records)


def test_the_cli_refuses_to_resume_on_rewritten_shards_before_training(tmp_path, caplog):
    paths = shards(tmp_path, "shards")
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(str(tmp_path / "shards" / "*.tar"))))
    train_dir = tmp_path / "run" / "train"
    train_dir.mkdir(parents=True)
    record(train_dir, "train", paths, paths, resuming=False)
    (train_dir / "checkpoints.jsonl").write_text(json.dumps({"checkpoint_id": "a-1", "step": 5}) + "\n")
    rewritten = write_synthetic(tmp_path / "other", 32, seed=5, per_shard=32)[0]
    for suffix in (".tar", ".parquet", "_stats.json"):  # shard 1 rewritten under its name
        shutil.copy(rewritten.removesuffix(".tar") + suffix, paths[1].removesuffix(".tar") + suffix)
    parser = argparse.ArgumentParser(prog="mmcurate")
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", str(config_path), "--run-dir", str(tmp_path / "run")])
    with caplog.at_level(logging.ERROR):
        assert run_train_command(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"1 shard(s) no longer hold the content recorded in {train_dir}/shards-train.json: {paths[1]}." in e
               for e in errors), errors
    assert not (train_dir / "ray").exists()  # refused before Ray Train started
