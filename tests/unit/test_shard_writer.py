import hashlib
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from mmcurate.schemas.record import empty_record
from mmcurate.stages.shard import write_shards


def jpeg(colour: str, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        r = empty_record(key=f"k{i:04d}", url=f"http://x/{i}.jpg", text=f"a red square number {i}", text_source="alt",
                         image=jpeg("red"), image_format="jpg", image_width=16, image_height=16,
                         scores={"clip": 0.5})
        if i % 3 == 0:
            r.update(audio=b"fLaC-not-really", audio_rate=16000, audio_seconds=1.0)
        out.append(r)
    return out


def test_shards_split_by_count_and_index_points_at_member_bytes(tmp_path):
    infos = write_shards(records(25), tmp_path, samples_per_shard=10)
    assert [i.samples for i in infos] == [10, 10, 5]
    index = pq.read_table(tmp_path / "shard-000000.parquet").to_pylist()
    raw = (tmp_path / "shard-000000.tar").read_bytes()
    for row in index:
        data = raw[row["offset"] : row["offset"] + row["size"]]
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert {r["member"].split(".", 1)[1] for r in index} == {"jpg", "flac", "txt", "json"}
    stats = json.loads((tmp_path / "shard-000002_stats.json").read_text())
    assert stats["samples"] == 5 and stats["images"] == 5


def test_byte_limit_closes_shards_and_oversized_sample_gets_its_own(tmp_path):
    recs = records(6)
    recs[2]["image"] = os.urandom(30_000)  # far larger than the limit below
    infos = write_shards(recs, tmp_path, samples_per_shard=100, max_shard_bytes=30_000)
    assert sum(i.samples for i in infos) == 6
    assert any(i.samples == 1 and i.bytes > 30_000 for i in infos)
    assert all(i.bytes <= 30_000 or i.samples == 1 for i in infos)


def test_same_records_give_byte_identical_shards(tmp_path):
    write_shards(records(12), tmp_path / "a", samples_per_shard=5)
    write_shards(records(12), tmp_path / "b", samples_per_shard=5)
    for name in ("shard-000000.tar", "shard-000001.parquet", "shard-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_webdataset_reads_back_every_sample(tmp_path):
    write_shards(records(7), tmp_path, samples_per_shard=3)
    samples = list(wds.WebDataset(str(tmp_path / "shard-{000000..000002}.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"k{i:04d}" for i in range(7)]
    assert samples[0]["txt"] == "a red square number 0"
    assert samples[0]["json"]["scores"] == {"clip": 0.5}
    assert samples[0]["jpg"].size == (16, 16)
    assert "flac" in samples[0] and "flac" not in samples[1]
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())


def test_rejects_bad_limits(tmp_path):
    with pytest.raises(ValueError):
        write_shards(records(1), tmp_path, samples_per_shard=0)


def test_the_writer_refuses_a_second_member_with_the_same_name(tmp_path):
    import pytest

    from mmcurate.schemas.record import empty_record
    from mmcurate.stages.shard import write_shards

    twice = [empty_record(key="same", text="a", image=b"x", image_format="jpg")] * 2
    with pytest.raises(ValueError, match="a second sample with key same"):
        write_shards(twice, tmp_path)


def test_records_sharing_a_key_keep_the_first_by_content_whatever_their_arrival_order():
    from mmcurate.schemas.record import empty_record
    from mmcurate.stages.shard import first_of_each_key

    a = empty_record(key="k1", url="http://a/", text="x", image=b"1")
    b = empty_record(key="k1", url="http://b/", text="x", image=b"2")
    c = empty_record(key="k2", url="http://c/", text="y", image=b"3")
    for order in ([a, b, c], [b, a, c]):
        groups = list(first_of_each_key(order))
        assert [(w["url"], [d["url"] for d in dups]) for w, dups in groups] == [("http://a/", ["http://b/"]), ("http://c/", [])]
