"""train_filter: the where-predicate selects the trusted records in the workers, the stage trains a filter model
on them with the project's trainer and publishes it, a killed training resumes from its checkpoint, and every
record passes the stage unchanged."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.pipeline.train.ledger import attempt_of
from mmcurate.pipeline.train.synthetic import records as synthetic_records
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record
from mmcurate.schemas.stage_configs import TrainFilterConfig
from mmcurate.stages.base import InputError, StageContext
from mmcurate.stages.train_filter import TrainFilterStage, check_predicate, held_out, select_rows

BASE = "http://127.0.0.1:1234"
WHERE = f"starts_with(url, '{BASE}/trusted/')"
TRUSTED, POOL = 480, 120
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
KILL_AT_STEP = 12  # after the first epoch's checkpoint (7 steps of 64), before the last


def _records(n: int, seed: int, section: str, shuffle_captions: bool = False) -> list[dict]:
    rows = list(synthetic_records(n, seed=seed))
    if shuffle_captions:  # a pool whose captions describe other images: training on it would teach nothing
        captions = [r["text"] for r in rows]
        np.random.default_rng(seed).shuffle(captions)
        rows = [{**r, "text": c} for r, c in zip(rows, captions)]
    return [empty_record(**{k: v for k, v in r.items() if k not in ("url", "scores")}, url=f"{BASE}/{section}/{i}.png",
                         scores=[]) for i, r in enumerate(rows)]


def _write_parquet(rows: list[dict], out: Path, files: int) -> list[str]:
    """The upstream's committed data files, as the runner hands them to ``summarize``."""
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    step = -(-table.num_rows // files)
    paths = []
    for i in range(files):
        paths.append(str(out / f"part-{i}.parquet"))
        pq.write_table(table.slice(i * step, step), paths[-1])
    return paths


def _train_config(path: Path, **sections) -> Path:
    config = {
        "epochs": 10,
        "data": {"batch_size": 32, "loader_workers": 0, "shuffle_block": 512, "seed": 0},
        "model": {"name": "mmcurate-train-filter-test", "custom": TINY_CLIP, "precision": "fp32"},
        "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_fraction": 0.05},
        "scaling": {"num_workers": 2},
        "checkpoint": {"every_n_steps": 1000, "keep": 2, "max_failures": 0},
        "logging": {"every_n_steps": 5, "progress_bar": False},
        **sections,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _context(root: Path) -> StageContext:
    return StageContext(name="train_filter", config_hash="test", work_dir=root / "work",
                        progress_dir=root / "progress")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- no Ray --------------------------------------------------------------------------------------------------


def test_the_predicate_selects_exactly_the_rows_it_names_in_batch_order():
    rows = [empty_record(key=f"k{i}", url=url, text=text, scores=scores) for i, (url, text, scores) in enumerate([
        (f"{BASE}/trusted/a.png", "a red circle", [("clip.x", 0.9)]),
        (f"{BASE}/images/b.png", "a red circle", []),
        (None, None, None),  # a null url: the predicate is null, which selects nothing
        (f"{BASE}/trusted/c.png", None, [("clip.x", 0.1)]),
        ("http://elsewhere.example/trusted/d.png", "x", []),
    ])]
    batch = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    assert select_rows(batch, WHERE)["key"].to_pylist() == ["k0", "k3"]
    assert select_rows(batch, "scores['clip.x'] > 0.5")["key"].to_pylist() == ["k0"]
    assert select_rows(batch, "text IS NULL AND url IS NOT NULL")["key"].to_pylist() == ["k3"]
    assert select_rows(batch, "false").num_rows == 0
    chosen = select_rows(batch, WHERE)
    assert chosen.schema == batch.schema and chosen.slice(0, 1).to_pylist() == batch.slice(0, 1).to_pylist()


@pytest.mark.parametrize("where, says", [
    ("starts_with(url, ", "not a DuckDB predicate"),
    ("no_such_column = 1", "no_such_column"),
    ("url", "VARCHAR, not a boolean"),
    ("true) OR (true", "not a DuckDB predicate"),
    ("true; DROP TABLE records", "not a DuckDB predicate"),
])
def test_a_predicate_that_is_not_one_boolean_expression_is_refused_naming_the_stage(where, says):
    with pytest.raises(InputError, match="stage my_filter") as err:
        check_predicate(where, RECORD_SCHEMA, "my_filter")
    assert says in str(err.value)


def test_decide_keeps_every_record_unchanged():
    rows = _records(6, seed=5, section="trusted")
    batch = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    stage = TrainFilterStage(TrainFilterConfig(train_config="unused.yaml", where=WHERE))
    stage.summary = {"trusted": 6}
    outcomes = stage.process_table(batch)
    assert outcomes["_reason"].null_count == outcomes.num_rows == 6
    assert outcomes.select(RECORD_SCHEMA.names).to_pylist() == batch.to_pylist()


# ---- Ray: one stage run, killed mid-training and restarted ---------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train-filter")
    trusted = _records(TRUSTED, seed=11, section="trusted")
    others = _records(POOL, seed=12, section="images", shuffle_captions=True)
    rng = np.random.default_rng(0)
    rows = [trusted[i] if i < TRUSTED else others[i - TRUSTED] for i in rng.permutation(TRUSTED + POOL)]
    return {"root": root, "files": _write_parquet(rows, root / "align-data", files=3),
            "trusted_keys": {r["key"] for r in trusted}}


@pytest.fixture(scope="module")
def trained(ray_session, pool) -> dict:
    """summarize as the runner calls it; the first attempt's training SIGKILLs a worker (Ray Train gives up:
    max_failures 0), like a run killed mid-stage; a fresh stage object on the same progress directory then
    summarizes again, as a restarted run does."""
    import ray.data
    import ray.train

    root = pool["root"]
    config = TrainFilterConfig(train_config=str(_train_config(root / "filter.yaml",
                                                              chaos={"kill_at_step": KILL_AT_STEP})),
                               where=WHERE, samples_per_shard=100)
    ctx = _context(root)
    with pytest.raises(ray.train.TrainingFailedError):
        TrainFilterStage(config).summarize(ray.data.read_parquet(pool["files"]), ctx)
    trusted_dir = ctx.progress_dir / "trusted"
    first = {p.name: p.stat().st_ino for p in trusted_dir.rglob("*.tar")}
    summary = TrainFilterStage(config).summarize(ray.data.read_parquet(pool["files"]), ctx)
    return {"ctx": ctx, "summary": summary, "first_shards": first, "config": config}


def _shard_keys(directory: Path) -> list[str]:
    """The samples' keys in shard order (the index has a row per member: image, txt, json)."""
    return list(dict.fromkeys(k for p in sorted(directory.glob("*.parquet")) for k in pq.read_table(p)["key"].to_pylist()))


def test_the_trusted_shards_hold_exactly_the_selected_records_in_key_order(pool, trained):
    trusted = trained["ctx"].progress_dir / "trusted"
    train, val = _shard_keys(trusted / "train"), _shard_keys(trusted / "held_out")
    assert set(train) | set(val) == pool["trusted_keys"] and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert all(held_out(k) for k in val) and not any(held_out(k) for k in train)
    assert trained["summary"]["trusted"] == TRUSTED
    assert (trained["summary"]["train"], trained["summary"]["held_out"]) == (len(train), len(val))


def test_a_restarted_summarize_resumes_training_from_the_killed_runs_checkpoint(trained):
    ctx = trained["ctx"]
    train_dir = ctx.progress_dir / "trainer" / "train"
    attempts = _lines(train_dir / "attempts.jsonl")
    assert len(attempts) == 2
    assert attempts[0]["resumed_from"] is None and attempts[0]["step"] == 0
    # the second attempt started from a checkpoint the first one wrote, not from step 0
    assert attempts[1]["resumed_from"] is not None and attempts[1]["step"] > 0
    first_attempts_checkpoints = {c["checkpoint_id"]: c["step"] for c in _lines(train_dir / "checkpoints.jsonl")
                                  if attempt_of(c["checkpoint_id"]) == attempts[0]["attempt"]}
    assert first_attempts_checkpoints.get(attempts[1]["resumed_from"]) == attempts[1]["step"]
    assert attempts[1]["step"] <= KILL_AT_STEP
    # the trusted shards were not written again (the trainer resumes only over the content it recorded)
    assert {p.name: p.stat().st_ino for p in (ctx.progress_dir / "trusted").rglob("*.tar")} == trained["first_shards"]


def test_the_published_model_scores_matched_captions_above_shuffled_ones(trained):
    import torch
    from PIL import Image

    from mmcurate.pipeline.train import load_scorer

    ctx, summary = trained["ctx"], trained["summary"]
    assert summary["model"] == "artifacts/model"
    # the trainer's config beside the model, as in its run directory: clip_score names the model from it
    published = yaml.safe_load((ctx.progress_dir / "artifacts" / "config.yaml").read_text())
    assert published["model"]["name"] == "mmcurate-train-filter-test"
    model, preprocess, tokenizer = load_scorer(ctx.progress_dir / summary["model"])
    fresh = list(synthetic_records(200, seed=99))  # never seen in training
    captions = [r["text"] for r in fresh]
    shuffled = [captions[(i + 7) % len(captions)] for i in range(len(captions))]
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in fresh])
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        matched = (image * torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)).sum(-1)
        other = (image * torch.nn.functional.normalize(model.encode_text(tokenizer(shuffled)), dim=-1)).sum(-1)
    different = torch.tensor([a != b for a, b in zip(captions, shuffled)])
    wins = (matched[different] > other[different]).float().mean().item()
    assert wins > 0.9, f"matched caption scored higher for only {wins:.2f} of the images"
    evaluation = summary["eval"]
    assert evaluation["image_to_text_r1"] > 3 * evaluation["image_to_text_r1_chance"]
    assert json.loads((ctx.progress_dir / "artifacts" / "eval.json").read_text())["image_text"]["samples"] == \
        summary["held_out"]


def test_a_predicate_that_selects_nothing_is_an_input_error(ray_session, pool, tmp_path):
    import ray.data

    config = TrainFilterConfig(train_config=str(_train_config(tmp_path / "filter.yaml")),
                               where=f"starts_with(url, '{BASE}/nowhere/')")
    with pytest.raises(InputError, match="selects no record"):
        TrainFilterStage(config).summarize(ray.data.read_parquet(pool["files"]), _context(tmp_path))
    assert not (tmp_path / "progress" / "trainer").exists()


def test_a_bad_predicate_fails_before_any_work(ray_session, pool, tmp_path):
    import ray.data

    config = TrainFilterConfig(train_config=str(_train_config(tmp_path / "filter.yaml")),
                               where="starts_with(url, ")
    with pytest.raises(InputError, match="stage train_filter: where"):
        TrainFilterStage(config).summarize(ray.data.read_parquet(pool["files"]), _context(tmp_path))
    assert not (tmp_path / "progress").exists()
