"""The global and sink roles on Ray: the same records give the same decisions and byte-identical shards with one
worker and with three, through the functions the runner calls (summary, streamed blocks, sink)."""

from __future__ import annotations

import hashlib
import io
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcurate.pipeline.sink import run_sink
from mmcurate.pipeline.stream import StageRun, block_counts, block_dir, run_blocks
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key
from mmcurate.schemas.stage_configs import ScoreFilterConfig, ShardConfig
from mmcurate.stages.base import Block, StageContext
from mmcurate.stages.score_filter import ScoreFilterStage
from mmcurate.stages.shard import ShardStage

pytestmark = pytest.mark.integration
SCORE = "clip_score.tiny-0000.image_text"


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (7 * i) % 256, 99)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> list[str]:
    """Five committed data files of 240 records with scores; some with no score, one tie at the cut."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("upstream")
    files = []
    for f in range(5):
        rows = []
        for j in range(48):
            i = f * 48 + j
            score = None if i % 37 == 0 else float(np.round(rng.normal(0.2, 0.1), 3))  # rounding makes ties
            rows.append(empty_record(key=stable_key("k", i), url=f"http://127.0.0.1/{i}.png", image=_png(i),
                                     image_format="png", text=f"caption {i}",
                                     scores={} if score is None else {SCORE: score, "other.metric": 1.0}))
        path = root / f"part-{f:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)
        files.append(str(path))
    return files


def _run_global_then_sink(files: list[str], workers: int, root: Path) -> tuple[dict, dict, dict[str, bytes]]:
    import ray

    config = ScoreFilterConfig(score="clip_score.*.image_text", top_fraction=0.3, concurrency=workers,
                               num_cpus=0.5)  # three fit on two CPUs
    stage = ScoreFilterStage(config, "score_filter")
    progress = root / "progress"
    ctx = StageContext(name="score_filter", config_hash="h", work_dir=root / "work", progress_dir=progress)
    summary = stage.summarize(ray.data.read_parquet(files), ctx)
    run = StageRun(ScoreFilterStage, config, "score_filter", "h", str(progress / "blocks"), summary=summary)
    (progress / "blocks").mkdir(parents=True)
    blocks = [Block(id=Path(f).stem, path=f, kind="records") for f in files]
    run_blocks([run], blocks, source=False, log=logging.getLogger("mmcurate.test"))
    counts = block_counts(run, blocks)
    kept = [str(Path(block_dir(run, b.id)) / "data.parquet") for b in blocks
            if (Path(block_dir(run, b.id)) / "data.parquet").exists()]
    sink = ShardStage(ShardConfig(samples_per_shard=10, concurrency=workers, num_cpus=0.5), "shard")
    work = root / "sink"
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in kept)
    stats = run_sink(sink, "h", kept, rows, work, root / "sink-progress", logging.getLogger("mmcurate.test"))
    shards = {p.name: p.read_bytes() for p in sorted((work / "shards").iterdir())}
    return summary, {**counts, "sink": stats}, shards



def test_global_stage_and_sink_give_identical_output_with_one_and_three_workers(ray_session, upstream, tmp_path):
    one = _run_global_then_sink(upstream, 1, tmp_path / "one")
    three = _run_global_then_sink(upstream, 3, tmp_path / "three")

    summary, counts, shards = one
    scores = [dict(s).get(SCORE) for f in upstream for s in pq.read_table(f)["scores"].to_pylist()]
    present = sorted((s for s in scores if s is not None), reverse=True)
    k = math.ceil(0.3 * len(present))
    assert summary == {"scored": len(present), "keep": k, "cut": present[k - 1]}  # the exact k-th largest
    expected_kept = sum(1 for s in scores if s is None or s >= present[k - 1])  # ties at the cut and unscored kept
    assert counts["kept"] == expected_kept and counts["in"] == 240
    assert counts["rejected"] == {"score_below_cut": 240 - expected_kept}
    assert counts["sink"]["kept"] == expected_kept

    assert one[0] == three[0] and one[1] == three[1]
    assert sorted(shards) == sorted(three[2]) and len([n for n in shards if n.endswith(".tar")]) >= 3
    digest = {name: hashlib.sha256(body).hexdigest() for name, body in shards.items()}
    assert digest == {name: hashlib.sha256(body).hexdigest() for name, body in three[2].items()}
    index = pq.read_table(tmp_path / "one" / "sink" / "shards" / sorted(n for n in shards if n.endswith(".parquet"))[0])
    assert index.schema.field("scores").type == pa.map_(pa.string(), pa.float64())


@pytest.mark.parametrize("values, fraction", [
    ([0, 4096, 11, 11, 11, 10.3, 10.2, 10.1], 5 / 8),  # values on a bin's upper edge, with ties
    ([float(i % 100) for i in range(100)], 0.07),  # 0.07 x 100 must keep 7 ranks, not ceil(7.000000000000001)
])
def test_the_cut_is_the_exact_kth_largest_score(ray_session, values, fraction, monkeypatch, tmp_path):
    import ray

    import mmcurate.stages.score_filter as score_filter

    monkeypatch.setattr(score_filter, "_EXACT", 2)  # refine down to bins of two values
    rows = [empty_record(key=f"k{i}", scores={SCORE: v}) for i, v in enumerate(values)]
    rows.append(empty_record(key="inf", scores={SCORE: float("inf")}))  # no usable score: not ranked
    stage = ScoreFilterStage(ScoreFilterConfig(score=SCORE, top_fraction=fraction), "score_filter")
    ctx = StageContext(name="score_filter", config_hash="h", work_dir=tmp_path, progress_dir=tmp_path)
    summary = stage.summarize(ray.data.from_arrow(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)), ctx)
    k = round(fraction * len(values))
    assert summary == {"scored": len(values), "keep": k, "cut": sorted(values, reverse=True)[k - 1]}


def test_a_score_no_record_has_is_an_error_not_a_filter_that_keeps_everything(ray_session, tmp_path):
    import ray

    from mmcurate.stages.base import InputError

    rows = [empty_record(key="a", scores={SCORE: 0.5})]
    stage = ScoreFilterStage(ScoreFilterConfig(score="clip_score.", top_fraction=0.5), "score_filter")
    ctx = StageContext(name="score_filter", config_hash="h", work_dir=tmp_path, progress_dir=tmp_path)
    with pytest.raises(InputError, match="no record has a score matching 'clip_score.'"):
        stage.summarize(ray.data.from_arrow(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)), ctx)
