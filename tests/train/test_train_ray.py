"""Training on Ray Train for real (2 CPU workers, gloo), on shards written by the pipeline's shard writer.

Ray Train costs ~30 s per fit here, so these tests run four fits in all."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml

from mmcurate.pipeline.train import load_scorer
from mmcurate.pipeline.train.api import train
from mmcurate.pipeline.train.checkpoint import CLIP_CONFIG, CLIP_WEIGHTS
from mmcurate.pipeline.train.cli import add_train_parser, run_train_command
from mmcurate.pipeline.train.config import TrainConfig
from mmcurate.pipeline.train.ledger import committed
from mmcurate.pipeline.train.shards import iter_shard
from train_helpers import tiny_config

pytestmark = pytest.mark.integration


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def all_keys(paths) -> list[str]:
    return sorted(s["__key__"] for p in paths for s in iter_shard(p))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_cli_trains_a_clip_that_retrieves_and_scores_held_out_pairs(ray_session, shape_shards, tmp_path):
    cfg = tiny_config(shape_shards["train_glob"], val=shape_shards["val_glob"], epochs=4,
                      checkpoint={"every_n_steps": 40})
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    parser = argparse.ArgumentParser(prog="mmcurate")
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", str(config_path), "--run-dir", str(tmp_path / "run"), "--set", "optim.warmup_fraction=0.1"]
    )
    assert run_train_command(args) == 0
    train_dir = tmp_path / "run" / "train"

    # loss falls
    steps = [m for m in read_jsonl(train_dir / "metrics.jsonl") if "loss" in m]
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "data_wait_fraction", "skipped"} <= set(steps[0])
    assert all(m["skipped"] == {} for m in steps)
    first, last = np.mean([m["loss"] for m in steps[:3]]), np.mean([m["loss"] for m in steps[-3:]])
    # from ~ln(64) down towards the floor that repeated captions leave (~ln 3.5 with 18 captions in 64 pairs)
    assert last < first - 1.2, (first, last)

    # every training sample was seen exactly once in each of the 4 epochs
    history = committed(train_dir)
    expected = all_keys(shape_shards["train"])
    assert sorted(history) == [0, 1, 2, 3]
    for epoch in history.values():
        assert sorted(epoch["trained"]) == expected and not epoch["skipped"]

    # held-out retrieval far above chance
    evaluation = json.loads((train_dir / "eval.json").read_text())["image_text"]
    assert evaluation["samples"] == 256
    for direction in ("image_to_text", "text_to_image"):
        r1, chance = evaluation[direction]["recall@1"], evaluation["chance"][direction]["recall@1"]
        assert r1 > max(0.5, 5 * chance), (direction, r1, chance)

    # the checkpoint is a scorer: matched pairs score above shuffled pairs
    model, preprocess, tokenizer = load_scorer(train_dir / "best")
    from PIL import Image
    import io

    samples = [s for p in shape_shards["val"] for s in iter_shard(p)]
    captions = [s["txt"].decode() for s in samples]
    images = torch.stack([preprocess(Image.open(io.BytesIO(s["png"])).convert("RGB")) for s in samples])
    rng = np.random.default_rng(0)
    shuffled = [c for c in captions]
    for i in range(len(shuffled)):  # a caption that does not describe the image
        while shuffled[i] == captions[i]:
            shuffled[i] = captions[int(rng.integers(len(captions)))]
    with torch.no_grad():
        img = model.encode_image(images, normalize=True)
        pos = (img * model.encode_text(tokenizer(captions), normalize=True)).sum(-1).numpy()
        neg = (img * model.encode_text(tokenizer(shuffled), normalize=True)).sum(-1).numpy()
    auc = roc_auc(pos, neg)
    assert auc >= 0.9, auc

    # ... and loads like any open_clip model: register the config, pass the weights as `pretrained`
    model_cfg = json.loads((train_dir / "final" / CLIP_CONFIG).read_text())["model_cfg"]
    (tmp_path / "mmcurate-scorer-copy.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(tmp_path / "mmcurate-scorer-copy.json")
    same, _, _ = open_clip.create_model_and_transforms(
        "mmcurate-scorer-copy", pretrained=str(train_dir / "final" / CLIP_WEIGHTS)
    )
    final, _, _ = load_scorer(train_dir / "final")
    for (name, a), (_, b) in zip(same.state_dict().items(), final.state_dict().items()):
        assert torch.equal(a, b), name
    print(f"\nfigures: loss {first:.3f} -> {last:.3f}; AUC {auc:.3f}; recall {json.dumps(evaluation)}")


def _resume_config(shards: dict, **sections) -> TrainConfig:
    base = tiny_config(shards["glob"], epochs=1, data={"batch_size": 16, "loader_workers": 2, "shuffle_block": 100},
                       checkpoint={"every_n_steps": 5})
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return TrainConfig.model_validate(base)


def _check_exactly_once(train_dir: Path, expected: list[str]) -> list[dict]:
    epoch = committed(train_dir)[0]
    assert sorted(epoch["trained"]) == expected  # each key once: no repeats, none missing
    assert not epoch["skipped"]
    attempts = read_jsonl(train_dir / "attempts.jsonl")
    assert len(attempts) == 2 and attempts[1]["resumed_from"] is not None
    # the run resumed mid-epoch, and the killed attempt had trained past that checkpoint (work that was redone)
    first_ckpt = read_jsonl(train_dir / "checkpoints.jsonl")[0]
    assert first_ckpt["checkpoint_id"] == attempts[1]["resumed_from"] and first_ckpt["remaining"] > 0
    lost = [line for p in (train_dir / "ledger" / attempts[0]["attempt"]).glob("*.jsonl")
            for line in read_jsonl(p) if line.get("step", 0) > first_ckpt["step"]]
    assert lost
    return attempts


def test_killed_worker_run_resumes_with_a_different_worker_count(ray_session, small_shards, tmp_path):
    run_dir = tmp_path / "run"
    killing = _resume_config(small_shards, chaos={"kill_at_step": 8, "kill_rank": 1})
    with pytest.raises(Exception):  # the worker's SIGKILL fails the run: max_failures is 0
        train(killing, run_dir)
    assert (run_dir / "train" / "chaos-killed").exists()
    resumed = _resume_config(small_shards, scaling={"num_workers": 1}, data={"loader_workers": 1})
    train(resumed, run_dir)
    attempts = _check_exactly_once(run_dir / "train", all_keys(small_shards["paths"]))
    assert [a["world_size"] for a in attempts] == [2, 1]


def test_ray_restarts_a_killed_worker_group_from_the_mid_epoch_checkpoint(ray_session, small_shards, tmp_path):
    cfg = _resume_config(small_shards, chaos={"kill_at_step": 7, "kill_rank": 0}, checkpoint={"max_failures": 1})
    train(cfg, tmp_path / "run")
    attempts = _check_exactly_once(tmp_path / "run" / "train", all_keys(small_shards["paths"]))
    assert [a["world_size"] for a in attempts] == [2, 2]
