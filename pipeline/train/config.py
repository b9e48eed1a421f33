"""Typed training configuration. A training run is exactly these fields; a YAML file under ``workflows/`` sets them.

``--set a.b=value`` overrides parse ``value`` as YAML, so ``--set optim.lr=1e-4`` is a float and
``--set data.val_shards=null`` clears a field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmcurate.schemas.yaml_files import load_yaml

ShardSpec = str | list[str]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioTowerConfig(StrictModel):
    """A log-mel spectrogram CNN encoder trained CLAP-style against the model's own text tower."""

    sample_rate: int = Field(16_000, ge=1000, description="waveforms are resampled to this rate")
    clip_seconds: float = Field(5.0, gt=0, description="clips are cropped or zero-padded to this length")
    n_fft: int = Field(400, ge=16)
    hop_length: int = Field(160, ge=1)
    n_mels: int = Field(64, ge=8)
    width: int = Field(64, ge=8, description="channels of the first conv block; doubled per block, capped at 8x")
    layers: int = Field(4, ge=1, le=8, description="conv blocks, each halving time and frequency")


class ModelConfig(StrictModel):
    name: str = Field("ViT-B-32", description="an open_clip.list_models() entry, or the name given to `custom`")
    custom: dict[str, Any] | None = Field(
        None, description="an open_clip model config (embed_dim, vision_cfg, text_cfg) registered under `name`"
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag, or a path to a checkpoint file")
    audio: AudioTowerConfig | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs that support it, fp32 otherwise"
    )

    @model_validator(mode="after")
    def _custom_is_a_clip_config(self) -> "ModelConfig":
        if self.custom is not None:
            missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(self.custom)
            if missing:
                raise ValueError(f"model.custom lacks {sorted(missing)}")
        return self


class DataConfig(StrictModel):
    train_shards: ShardSpec = Field(..., description="local globs, brace patterns or fsspec URLs of .tar shards")
    val_shards: ShardSpec | None = Field(None, description="shards for the validation loss (early stopping)")
    eval_shards: ShardSpec | None = Field(None, description="held-out shards for retrieval recall; default val_shards")
    batch_size: int = Field(64, ge=1, description="samples per training worker per step")
    loader_workers: int = Field(2, ge=0, description="DataLoader processes per training worker (0: decode inline)")
    prefetch_batches: int = Field(2, ge=1, description="batches each loader process prepares ahead")
    shuffle_shards: bool = True
    shuffle_block: int = Field(
        1000, ge=1, description="samples are permuted within blocks of this many (memory: one block per loader)"
    )
    seed: int = 0
    on_corrupt: Literal["skip", "raise"] = Field("skip", description="skip: count, log (throttled) and go on")


class OptimConfig(StrictModel):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of all training samples spent warming up")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    grad_clip_norm: float | None = Field(1.0, gt=0)


class ScalingConfig(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process, one device each)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)


class CheckpointConfig(StrictModel):
    every_n_steps: int = Field(500, ge=1, description="a mid-epoch checkpoint every this many steps")
    keep: int = Field(2, ge=1, description="checkpoints Ray Train keeps")
    storage_path: str | None = Field(None, description="Ray Train storage (path or s3:// URL); default RUN_DIR/train")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: unlimited)")


class EarlyStoppingConfig(StrictModel):
    val_every_n_steps: int | None = Field(None, ge=1, description="None: validate at the end of each epoch")
    patience: int = Field(3, ge=1, description="validations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class EvalConfig(StrictModel):
    batch_size: int = Field(256, ge=1)
    recall_ks: list[int] = Field(default_factory=lambda: [1, 5])
    max_samples: int | None = Field(None, ge=1)


class LoggingConfig(StrictModel):
    every_n_steps: int = Field(10, ge=1)
    progress_bar: bool = True
    record_keys: bool = Field(True, description="write every consumed sample key to RUN_DIR/train/ledger")


class ChaosConfig(StrictModel):
    """Fault injection for testing resumption: the worker of rank ``kill_rank`` SIGKILLs its own process right
    after step ``kill_at_step``, once per run directory."""

    kill_at_step: int | None = Field(None, ge=1)
    kill_rank: int = Field(0, ge=0)


class TrainConfig(StrictModel):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    chaos: ChaosConfig = ChaosConfig()
    epochs: int = Field(1, ge=1)
    run_dir: str | None = Field(None, description="default run directory; the CLI's --run-dir wins")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        raw = load_yaml(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a training config is a mapping, got {type(raw).__name__}")
        return cls.model_validate(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=yaml-value`` applied."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy that keeps only YAML types
    for item in overrides:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"override {item!r} is not key=value")
        node = out
        *parents, leaf = path.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = yaml.safe_load(value)
    return out
