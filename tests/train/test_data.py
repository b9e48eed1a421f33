"""Streaming shards: brace patterns and fsspec URLs, exactly-once per epoch, corrupt and truncated input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import fsspec
import open_clip
import pytest
import webdataset as wds

from mmcurate.pipeline.train.data import SHARD_TRUNCATED, Decoder, ShardStream, SkipSample, make_loader
from mmcurate.pipeline.train.order import assign
from mmcurate.pipeline.train.shards import count_all, expand_shards
from mmcurate.pipeline.train.synthetic import records, shape_image


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(open_clip.SimpleTokenizer(context_length=16), open_clip.image_transform(32, is_train=False), None)


def stream_keys(urls, decoder, *, world=1, workers=0, epoch=0, batch_size=16):
    counts = count_all(urls)
    out, skipped = [], []
    for rank, share in enumerate(assign([(0, sum(counts))], world, workers)):
        ds = ShardStream(
            urls, counts, assignment=share, consumer_base=rank * max(1, workers), seed=5, epoch=epoch, block=100,
            shuffle_shards=True, batch_size=batch_size, decoder=decoder,
        )
        for batch in make_loader(ds, loader_workers=workers, prefetch_batches=2, pin_memory=False):
            assert len(batch["keys"]) <= batch_size
            out += batch["keys"]
            skipped += batch["skipped"]
    return out, skipped


def test_brace_pattern_streams_every_sample_once_across_ranks_and_loader_workers(small_shards, decoder):
    expected = sorted(r["key"] for r in records(520, seed=3))
    urls = expand_shards(str(small_shards["root"] / "shard-{000000..000008}.tar"))
    assert len(urls) == 9
    keys, skipped = stream_keys(urls, decoder, world=2, workers=2)
    assert sorted(keys) == expected and not skipped
    # the order is shuffled, and differs between epochs
    again, _ = stream_keys(urls, decoder, world=2, workers=2, epoch=1)
    assert keys != sorted(keys) and again != keys and sorted(again) == expected


def test_fsspec_urls_stream_without_copying_to_disk(small_shards, decoder):
    expected = sorted(r["key"] for r in records(520, seed=3))
    fs = fsspec.filesystem("memory")
    for path in small_shards["paths"]:  # tars only: counts come from a pass over the tar headers
        fs.pipe(f"/mmcurate-test/{Path(path).name}", Path(path).read_bytes())
    urls = expand_shards("memory://mmcurate-test/shard-*.tar")
    assert urls[0].startswith("memory://") and len(urls) == 9
    keys, _ = stream_keys(urls, decoder)
    assert sorted(keys) == expected
    file_urls = expand_shards(f"file://{small_shards['root']}/*.tar")
    keys, _ = stream_keys(file_urls, decoder, world=3)
    assert sorted(keys) == expected


def test_relative_patterns_resolve_to_absolute_paths(small_shards, monkeypatch):
    monkeypatch.chdir(small_shards["root"].parent)
    urls = expand_shards(f"{small_shards['root'].name}/shard-00000[0-2].tar")
    assert urls == [str(small_shards["root"] / f"shard-00000{i}.tar") for i in range(3)]


def test_missing_pattern_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards(str(tmp_path / "nothing-{0..3}.tar"))


def _png(seed=0):
    import numpy as np

    return shape_image("red", "circle", np.random.default_rng(seed))


def test_corrupt_samples_are_counted_and_skipped_with_throttled_warnings(tmp_path, decoder, caplog):
    path = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(path)) as w:
        for i in range(30):
            w.write({"__key__": f"bad{i:02d}", "png": b"not a png", "txt": b"a red circle"})
        w.write({"__key__": "good0", "png": _png(), "txt": b"a red circle"})
        w.write({"__key__": "latin1", "png": _png(1), "txt": "caf\xe9".encode("latin-1")})
        w.write({"__key__": "audioonly", "flac": b"fLaC", "txt": b"a beep"})
        w.write({"__key__": "good1", "png": _png(2), "txt": b"a red circle"})
    with caplog.at_level(logging.WARNING, logger="mmcurate.pipeline.train.data"):
        keys, skipped = stream_keys([str(path)], decoder)
    assert sorted(keys) == ["good0", "good1"]
    reasons = dict(skipped)
    assert len(skipped) == 32
    assert reasons["bad00"] == "image_corrupt" and reasons["latin1"] == "not_utf8"
    assert reasons["audioonly"] == "no_trainable_modality"  # no audio tower configured
    warnings = [r for r in caplog.records if "skipped sample #" in r.getMessage()]
    assert len(warnings) == 10  # the first ten; then only the 100th, 1000th, ...
    assert any("skipped 32 samples" in r.getMessage() for r in caplog.records)

    counts = count_all([str(path)])
    ds = ShardStream([str(path)], counts, assignment=[[(0, counts[0])]], consumer_base=0, seed=0, epoch=0, block=1,
                     shuffle_shards=False, batch_size=8, decoder=decoder, on_corrupt="raise")
    with pytest.raises(SkipSample, match="image_corrupt"):
        list(ds)


def test_a_truncated_shard_reports_its_missing_samples(small_shards, tmp_path, decoder, caplog):
    src = Path(small_shards["paths"][0])
    for suffix in (".tar", "_stats.json"):
        shutil.copy(src.with_name(src.stem + suffix) if suffix != ".tar" else src, tmp_path / f"cut-000000{suffix}")
    data = (tmp_path / "cut-000000.tar").read_bytes()
    (tmp_path / "cut-000000.tar").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.ERROR):
        keys, skipped = stream_keys([str(tmp_path / "cut-000000.tar")], decoder)
    assert 0 < len(keys) < 64
    assert len(keys) + len(skipped) == 64  # stats said 64: every position is accounted for
    reasons = [reason for _, reason in skipped]
    # the sample cut in half lacks its caption; the ones after it are missing altogether
    assert set(reasons) <= {SHARD_TRUNCATED, "no_text"} and reasons.count(SHARD_TRUNCATED) >= len(reasons) - 1
    assert any("shard read error" in r.getMessage() for r in caplog.records)
