"""The dedupe stage on Ray, through the functions the runner calls (summary, then the streamed blocks): every
planted copy dropped with the method, the survivor and the distance, the same decisions with one worker and with
three on shuffled input, and the connected components equal to scipy's."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from dedupe_helpers import PHOTOS, cropped, decoded, jpeg, photos, record, table, variants

from mmcurate.pipeline.stream import StageRun, block_counts, block_dir, run_blocks
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key
from mmcurate.schemas.stage_configs import DedupeConfig
from mmcurate.stages.base import Block, InputError, StageContext
from mmcurate.stages.dedupe.drops import survivor_of
from mmcurate.stages.dedupe.stage import DedupeStage

pytestmark = pytest.mark.integration
DIM = 16
CONFIG = {"perceptual": {"radius": 12}, "semantic": {"enabled": True, "eps": 0.02, "clusters": 4},
          "text": {"enabled": True, "threshold": 0.8}, "partitions": 8, "num_cpus": 0.5}


def _embedding(rng: np.random.Generator, near: np.ndarray | None = None) -> list[float]:
    v = rng.normal(size=DIM) if near is None else near + 0.01 * rng.normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _flac(samples: np.ndarray, fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, 16000, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _caption(rng: random.Random) -> str:
    words = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "juniper", "kelp",
             "lotus", "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sage", "thistle"]
    return " ".join(rng.sample(words, 8))


@pytest.fixture(scope="module")
def pool() -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """Records and the answer key: copy name -> (the reason it must get, the original it copies)."""
    rng, text_rng = np.random.default_rng(5), random.Random(5)
    images = photos()
    rows, answer = [], {}
    for name in PHOTOS[:10]:
        original = jpeg(images[name])
        vector = np.array(_embedding(rng))
        rows.append(record(name, original, _caption(text_rng), score=0.30, embedding=vector.tolist()))
        copies = {**variants(original), "cropped": jpeg(cropped(decoded(original), 0.025))}
        # the lossless copy scores higher than its original: it survives, and every other copy names it
        survivor = f"{name}-png"
        answer[name] = ("duplicate", survivor)
        for variant, data in copies.items():
            copy = f"{name}-{variant}"
            score = 0.35 if variant == "png" else 0.2
            rows.append(record(copy, data, _caption(text_rng), score=score, embedding=_embedding(rng, vector)))
            if copy != survivor:
                answer[copy] = ("duplicate" if variant == "renamed" else "near_duplicate", survivor)
    # two photos that look nothing alike to a pHash but embed alike: a semantic duplicate
    vector = np.array(_embedding(rng))
    rows.append(record("brick", jpeg(images["brick"]), _caption(text_rng), score=0.5, embedding=vector.tolist()))
    rows.append(record("grass-like-brick", jpeg(images["grass"]), _caption(text_rng), score=0.4,
                       embedding=_embedding(rng, vector)))
    answer["grass-like-brick"] = ("semantic_duplicate", "brick")
    # audio: a FLAC and a WAV of the same samples (exact), with unrelated speech-free captions; and two clips whose
    # transcripts differ by punctuation only (text)
    # int16 samples: libsndfile's FLAC and WAV writers round floats differently, so float input would not give
    # the two containers the same samples
    tone = (9000 * np.sin(np.linspace(0, 2000, 16000))).astype(np.int16)
    noise = np.random.default_rng(1).normal(0, 3000, 16000).astype(np.int16)
    for name, data, text in (("tone.flac", _flac(tone), _caption(text_rng)), ("tone.wav", _flac(tone, "WAV"),
                                                                              _caption(text_rng)),
                             ("noise-a", _flac(noise), "Rain falls on the old tin roof of the station tonight."),
                             ("noise-b", _flac(noise[::-1].copy()), "rain falls on the old tin roof of the station "
                                                                    "tonight")):
        rows.append({**empty_record(key=stable_key("dedupe-test", name), url=f"http://127.0.0.1/{name}", audio=data,
                                    audio_format="flac", audio_rate=16000, audio_seconds=1.0, text=text),
                     "embedding": _embedding(rng)})
    # equal score and size: the smaller key survives
    for reason, pair in (("duplicate", ("tone.flac", "tone.wav")), ("text_duplicate", ("noise-a", "noise-b"))):
        survivor, copy = sorted(pair, key=lambda n: stable_key("dedupe-test", n))
        answer[copy] = (reason, survivor)
    return rows, answer


def _schema() -> pa.Schema:
    return RECORD_SCHEMA.append(pa.field("embedding", pa.list_(pa.float32(), DIM)))


def _write(rows: list[dict], root: Path, files: int) -> list[str]:
    root.mkdir(parents=True)
    paths = []
    for f in range(files):
        path = root / f"part-{f:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[f::files], schema=_schema()), path)
        paths.append(str(path))
    return paths



def _run(files: list[str], workers: int, root: Path) -> tuple[dict, pa.Table, set[str], dict]:
    import ray

    config = DedupeConfig(**CONFIG, concurrency=workers)
    progress = root / "progress"
    ctx = StageContext(name="dedupe", config_hash="h", work_dir=root / "work", progress_dir=progress)
    summary = DedupeStage(config, "dedupe").summarize(ray.data.read_parquet(files), ctx)
    run = StageRun(DedupeStage, config, "dedupe", "h", str(progress / "blocks"), summary=summary)
    (progress / "blocks").mkdir(parents=True)
    blocks = [Block(id=Path(f).stem, path=f, kind="records") for f in files]
    run_blocks([run], blocks, source=False, log=logging.getLogger("mmcurate.test"))
    kept = set()
    for b in blocks:
        data = Path(block_dir(run, b.id)) / "data.parquet"
        if data.exists():
            kept |= set(pq.read_table(data, columns=["key"])["key"].to_pylist())
    rejects = pa.concat_tables([pq.read_table(Path(block_dir(run, b.id)) / "rejects.parquet") for b in blocks
                                if (Path(block_dir(run, b.id)) / "rejects.parquet").exists()])
    return summary, pq.read_table(summary["drops"]), kept, {"counts": block_counts(run, blocks), "rejects": rejects}


@pytest.fixture(scope="module")
def runs(ray_session, pool, tmp_path_factory):
    rows, _ = pool
    root = tmp_path_factory.mktemp("dedupe-stage")
    one = _run(_write(rows, root / "in-one", 1), 1, root / "one")
    shuffled = random.Random(11).sample(rows, len(rows))
    three = _run(_write(shuffled, root / "in-three", 3), 3, root / "three")
    return one, three


def test_every_planted_copy_is_dropped_naming_its_method_survivor_and_distance(pool, runs):
    rows, answer = pool
    (summary, drops, kept, outcome), _ = runs
    name_of = {r["key"]: r["url"].rsplit("/", 1)[1] for r in rows}
    got = {name_of[k]: (reason, name_of[other]) for k, reason, other in
           zip(drops["key"].to_pylist(), drops["reason"].to_pylist(), drops["other"].to_pylist())}
    assert got == answer
    assert kept == {r["key"] for r in rows} - set(drops["key"].to_pylist())
    assert outcome["counts"]["in"] == len(rows) and outcome["counts"]["kept"] == len(kept)
    assert summary["dropped"] == {"duplicate": 21, "near_duplicate": 30, "semantic_duplicate": 1,
                                  "text_duplicate": 1}
    rejects = {k: (r, d) for k, r, d in zip(outcome["rejects"]["key"].to_pylist(),
                                            outcome["rejects"]["reason"].to_pylist(),
                                            outcome["rejects"]["detail"].to_pylist())}
    for key, reason, method, distance in zip(drops["key"].to_pylist(), drops["reason"].to_pylist(),
                                             drops["method"].to_pylist(), drops["distance"].to_pylist()):
        row_reason, text = rejects[key]
        assert row_reason == reason and survivor_of(text) in kept  # every survivor named here was kept
        if reason == "near_duplicate":
            assert method == "phash" and text.startswith(f"near_duplicate of {survivor_of(text)} (phash hamming ")
            assert int(text.split("hamming ")[1].split(",")[0]) == distance <= 12
        if reason == "semantic_duplicate":
            assert "embedding cosine" in text and distance > 0.98
        if reason == "text_duplicate":
            assert "minhash jaccard" in text and distance >= 0.8
        if reason == "duplicate":
            assert distance == 0 and method in ("exact_pixels", "exact_samples")


def test_the_decisions_do_not_depend_on_the_number_of_workers_or_the_input_order(runs):
    (summary_one, drops_one, kept_one, outcome_one), (summary_three, drops_three, kept_three, outcome_three) = runs
    assert kept_one == kept_three
    assert drops_one.equals(drops_three)  # byte for byte the same table, details included
    assert summary_one["dropped"] == summary_three["dropped"]
    assert outcome_one["counts"] == outcome_three["counts"]


def test_semantic_dedupe_without_embeddings_fails_naming_the_column(ray_session, pool, tmp_path):
    import ray

    rows, _ = pool
    path = tmp_path / "plain.parquet"
    pq.write_table(table({k: v for k, v in r.items() if k != "embedding"} for r in rows[:3]), path)
    stage = DedupeStage(DedupeConfig(semantic={"enabled": True}), "dedupe")
    ctx = StageContext(name="dedupe", config_hash="h", work_dir=tmp_path / "w", progress_dir=tmp_path / "p")
    with pytest.raises(InputError, match="embedding column"):
        stage.summarize(ray.data.read_parquet([str(path)]), ctx)


def test_components_over_ray_equal_scipy_and_point_at_each_components_smallest_node(ray_session):
    import ray
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from mmcurate.stages.dedupe.components import components
    from mmcurate.stages.dedupe.shuffle import sort_shuffle

    rng = np.random.default_rng(2)
    n = 400
    a, b = rng.integers(0, n, 330), rng.integers(0, n, 330)
    a = np.concatenate([a, np.arange(100, 160)])  # one long chain: many rounds
    b = np.concatenate([b, np.arange(101, 161)])
    names = [f"{rng.integers(0, 10**6):07d}-{i}" for i in range(n)]
    edges = ray.data.from_arrow(pa.table({"a": [names[i] for i in a], "b": [names[j] for j in b]}))
    with sort_shuffle(edges):
        result = pa.concat_tables(ray.get(components(edges, 6).to_arrow_refs()))
    found = dict(zip(result["node"].to_pylist(), result["survivor"].to_pylist()))
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    expected = {}
    for comp in set(label.tolist()):
        members = sorted(names[i] for i in np.flatnonzero(label == comp) if i in set(a) | set(b))
        expected.update({m: members[0] for m in members[1:]})
    assert found == expected and len(expected) > 250


def test_an_upstream_that_kept_nothing_drops_nothing(ray_session, tmp_path):
    import ray

    ctx = StageContext(name="dedupe", config_hash="h", work_dir=tmp_path / "w", progress_dir=tmp_path / "p")
    summary = DedupeStage(DedupeConfig(), "dedupe").summarize(ray.data.from_items([]), ctx)
    assert summary["records"] == 0 and summary["dropped"] == {}
    assert pq.read_table(summary["drops"]).num_rows == 0
