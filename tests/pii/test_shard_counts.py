"""The pii stage's per-sample counts reach each sample's ``.json`` in the shards through the sink the runner uses
(``run_sink``: read the committed files on Ray, shuffle into key ranges, write): the counts, never the values;
and the shards are byte-identical with one worker and with three."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcurate.pipeline.sink import run_sink
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key
from mmcurate.schemas.stage_configs import FacesConfig, PiiConfig, ShardConfig
from mmcurate.stages.base import split_outcomes
from mmcurate.stages.pii.stage import PiiStage
from mmcurate.stages.shard import ShardStage

pytestmark = pytest.mark.integration

CAPTIONS = ("a red barn, mail anna.schmidt@example.com or call 808\u2013634\u20130968",
            "two dogs on a beach, tel (808) 634-0968 (212) 555-0199",
            "a bowl of ramen")


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (7 * i) % 256, 99)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> list[str]:
    """Three data files of the pii stage's kept records, as the runner commits them (the pii column included)."""
    import pyarrow as pa

    stage = PiiStage(PiiConfig(faces=FacesConfig(enabled=False)))
    root = tmp_path_factory.mktemp("pii-out")
    files = []
    for f in range(3):
        rows = [empty_record(key=stable_key("k", f * 20 + j), url=f"http://127.0.0.1/{f * 20 + j}.png",
                             image=_png(f * 20 + j), image_format="png", caption=CAPTIONS[j % 3], text=CAPTIONS[j % 3], text_source="caption")
                for j in range(20)]
        kept, _ = split_outcomes(stage.process_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)))
        assert "pii" in kept.column_names
        path = root / f"part-{f:05d}.parquet"
        pq.write_table(kept, path)
        files.append(str(path))
    return files


def _shards(files: list[str], workers: int, root: Path) -> dict[str, bytes]:
    sink = ShardStage(ShardConfig(samples_per_shard=7, concurrency=workers, num_cpus=0.5), "shard")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    run_sink(sink, "h", files, rows, root / "sink", root / "progress", logging.getLogger("mmcurate.test"))
    return {p.name: p.read_bytes() for p in sorted((root / "sink" / "shards").iterdir())}


def _samples(root: Path) -> dict[str, dict]:
    out = {}
    for tar_path in sorted((root / "sink" / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    out[meta["key"]] = meta
    return out


def test_the_pii_counts_reach_the_shards_json_through_the_sink(ray_session, committed, tmp_path):
    one = _shards(committed, 1, tmp_path / "one")
    samples = _samples(tmp_path / "one")
    assert len(samples) == 60
    by_caption = {}
    for f in committed:
        for row in pq.read_table(f, columns=["key", "caption"]).to_pylist():
            by_caption.setdefault(row["caption"], []).append(row["key"])
    counts = {caption: {json.dumps(samples[k].get("pii"), sort_keys=True) for k in keys}
              for caption, keys in by_caption.items()}
    assert counts == {
        "a red barn, mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>": {'{"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}'},
        "two dogs on a beach, tel <PHONE_NUMBER>": {'{"PHONE_NUMBER": 2}'},
        "a bowl of ramen": {"{}"},
    }
    blobs = b"".join(one.values())
    for value in ("anna.schmidt@example.com", "808\u2013634\u20130968", "(808) 634-0968", "(212) 555-0199"):
        assert value.encode() not in blobs

    three = _shards(committed, 3, tmp_path / "three")
    assert len([n for n in one if n.endswith(".tar")]) >= 3
    assert {n: hashlib.sha256(b).hexdigest() for n, b in one.items()} == \
        {n: hashlib.sha256(b).hexdigest() for n, b in three.items()}
