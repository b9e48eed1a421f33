"""``train(config, run_dir)``: resolve shards on the driver, run the Ray Train job, evaluate the result.

Run directory layout (``RUN_DIR/train``):
  .lock                held (flock) by the one trainer using this run directory
  config.yaml          the resolved TrainConfig
  shards-train.json    per shard: URL, path read, sample count, content digest (also -val, -eval; see manifest)
  metrics.jsonl        one line per logged step (and per validation)
  attempts.jsonl       one line per start of the worker loop; checkpoints.jsonl one per checkpoint
  ledger/              every consumed sample key, per attempt and rank (mmcurate.pipeline.train.ledger)
  ray/                 Ray Train's run: checkpoints (each also an open_clip model directory)
  best/, final/        open_clip model directories: best validation loss, last step
  eval.json            retrieval recall on the held-out shards, with chance levels

Running the same command again with the same run directory resumes from the latest checkpoint, provided the
shards hold the content recorded when the run started.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmcurate.pipeline.train import manifest
from mmcurate.pipeline.train.config import TrainConfig
from mmcurate.pipeline.train.locks import reader_locks, run_lock
from mmcurate.pipeline.train.manifest import ShardEntry
from mmcurate.pipeline.train.shards import expand_shards, resolve_local

log = logging.getLogger(__name__)

RAY_RUN_NAME = "ray"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    scorer_dir: Path  # best/ when validation ran, else final/: load with mmcurate.pipeline.train.load_scorer
    checkpoint: str | None  # the latest Ray Train checkpoint
    metrics: dict[str, Any]
    eval: dict[str, Any] | None


def train(config: TrainConfig, run_dir: str | Path, *, ray_address: str | None = None) -> TrainResult:
    """Train, holding the run directory (``locks.run_lock``) and the shard generations it reads
    (``locks.reader_locks``) until the evaluation is written."""
    run_dir = Path(run_dir).resolve()
    train_dir = run_dir / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(train_dir):  # before any file is written: a second trainer must not touch this run's files
        (train_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        from mmcurate.pipeline.train.model import resolve_model_config  # torch: after the lock, which fails fast

        resolve_model_config(config.model)  # an unknown model name fails here, before shards are read
        specs = {
            "train": config.data.train_shards,
            "val": config.data.val_shards,
            "eval": config.data.eval_shards or config.data.val_shards,
        }
        urls = {role: expand_shards(spec) if spec is not None else [] for role, spec in specs.items()}
        paths = {role: [resolve_local(u) for u in role_urls] for role, role_urls in urls.items()}
        with reader_locks([p for role_paths in paths.values() for p in role_paths]):
            resuming = _has_checkpoint(train_dir)
            shards = {}
            for role, spec in specs.items():
                if spec is None:
                    shards[role] = []
                    continue
                shards[role] = manifest.record(train_dir, role, urls[role], paths[role], resuming=resuming)
                if sum(e.count for e in shards[role]) == 0:
                    raise ValueError(f"{role} shards {spec!r} hold no samples")
            return _fit_and_evaluate(config, run_dir, shards, ray_address)


def _has_checkpoint(train_dir: Path) -> bool:
    """Whether a start would resume: rank 0 records every checkpoint it wrote in ``checkpoints.jsonl``."""
    record = train_dir / "checkpoints.jsonl"
    return record.is_file() and any(line.strip() for line in record.read_text().splitlines())


def _fit_and_evaluate(
    config: TrainConfig, run_dir: Path, shards: dict[str, list[ShardEntry]], ray_address: str | None
) -> TrainResult:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from mmcurate.pipeline.train.evaluate import evaluate_checkpoint
    from mmcurate.pipeline.train.loop import train_loop_per_worker

    train_dir = run_dir / "train"
    train_set, val_set, eval_set = shards["train"], shards["val"], shards["eval"]
    log.info(
        "training on %d samples in %d shards, %d epochs, %d workers (%s)", sum(e.count for e in train_set),
        len(train_set), config.epochs, config.scaling.num_workers, "GPU" if config.scaling.use_gpu else "CPU",
    )

    if not ray.is_initialized():
        ray.init(address=ray_address)
    scaling = config.scaling
    storage = config.checkpoint.storage_path or str(train_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "train_urls": [e.url for e in train_set],
            "train_paths": [e.path for e in train_set],
            "train_counts": [e.count for e in train_set],
            "train_digests": [e.digest for e in train_set],
            "val_paths": [e.path for e in val_set],
            "val_counts": [e.count for e in val_set],
            "checkpoint_root": f"{storage.rstrip('/')}/{RAY_RUN_NAME}",
        },
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=config.checkpoint.max_failures),
        ),
    )
    result = trainer.fit()

    scorer_dir = train_dir / "best" if (train_dir / "best").is_dir() else train_dir / "final"
    evaluation = None
    if eval_set:
        evaluation = evaluate_checkpoint(
            scorer_dir, [e.path for e in eval_set], [e.count for e in eval_set], ks=config.eval.recall_ks,
            batch_size=config.eval.batch_size, max_samples=config.eval.max_samples,
        )
        (train_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
        log.info("retrieval on held-out shards: %s", _summary(evaluation))
    return TrainResult(
        run_dir=run_dir,
        scorer_dir=scorer_dir,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        metrics=dict(result.metrics or {}),
        eval=evaluation,
    )


def _summary(evaluation: dict[str, Any]) -> str:
    parts = []
    for name in ("image", "audio"):
        block = evaluation.get(f"{name}_text")
        if block:
            r1 = block[f"{name}_to_text"]["recall@1"]
            chance = block["chance"][f"{name}_to_text"]["recall@1"]
            parts.append(f"{name}->text R@1 {r1:.3f} (chance {chance:.3f})")
    return "; ".join(parts) or "no pairs"
