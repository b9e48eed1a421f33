"""The sample ledger's committed history, and config parsing with overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mmcurate.pipeline.train.config import TrainConfig, apply_overrides
from mmcurate.pipeline.train.ledger import LedgerWriter, committed, record_attempt

REPO = Path(__file__).resolve().parents[2]


def test_committed_history_drops_work_lost_after_the_checkpoint_resumed_from(tmp_path):
    # attempt a: commits a-1 after k0,k1; trains k2,k3 and commits a-2; trains k4 then dies
    record_attempt(tmp_path, "a", None)
    for rank, (first, second) in enumerate([("k0", "k2"), ("k1", "k3")]):
        w = LedgerWriter(tmp_path, "a", rank)
        w.batch(0, 1, [first], [])
        w.commit("a-1")
        w.batch(0, 2, [second], [] if rank else [["bad", "image_corrupt"]])
        w.commit("a-2")
        if rank == 0:
            w.batch(0, 3, ["k4"], [])
        w.close()
    # attempt b resumed from a-1 (a-2 was written but, say, never reported): retrains k2..k4 with one rank
    record_attempt(tmp_path, "b", "a-1")
    w = LedgerWriter(tmp_path, "b", 0)
    w.batch(0, 2, ["k2", "k3"], [["bad", "image_corrupt"]])
    w.batch(0, 3, ["k4"], [])
    w.commit("b-1")
    w.batch(1, 4, ["k0"], [])  # after b's last commit: not committed
    w.close()
    history = committed(tmp_path)
    assert sorted(history[0]["trained"]) == ["k0", "k1", "k2", "k3", "k4"]
    assert history[0]["skipped"] == [["bad", "image_corrupt"]]
    assert 1 not in history


def test_overrides_parse_values_as_yaml_and_unknown_fields_are_rejected(tmp_path):
    raw = {"data": {"train_shards": "a/*.tar"}}
    out = apply_overrides(raw, ["optim.lr=1e-4", "data.val_shards=[x.tar, y.tar]", "scaling.use_gpu=true"])
    cfg = TrainConfig.model_validate(out)
    assert cfg.optim.lr == 1e-4 and cfg.data.val_shards == ["x.tar", "y.tar"] and cfg.scaling.use_gpu
    assert raw == {"data": {"train_shards": "a/*.tar"}}  # input untouched
    with pytest.raises(ValidationError):
        TrainConfig.model_validate(apply_overrides(raw, ["optim.learning_rate=1"]))
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(raw, ["optim.lr"])
    with pytest.raises(ValidationError, match="lacks"):
        TrainConfig.model_validate(apply_overrides(raw, ["model.custom={embed_dim: 8}"]))


def test_demo_workflow_config_validates():
    cfg = TrainConfig.from_yaml(REPO / "workflows" / "train_demo.yaml")
    assert cfg.data.train_shards == ["runs/demo/shards/images/*.tar", "runs/demo/shards/audio/*.tar"]
    assert cfg.run_dir == "runs/demo"
    assert cfg.model.audio is not None
