"""``train(config, run_dir)``: resolve shards on the driver, run the Ray Train job, evaluate the result.

Run directory layout (``RUN_DIR/train``):
  config.yaml          the resolved TrainConfig
  shards-train.json    shard URLs and sample counts the epoch order is built on (also -val, -eval)
  metrics.jsonl        one line per logged step (and per validation)
  attempts.jsonl       one line per start of the worker loop; checkpoints.jsonl one per checkpoint
  ledger/              every consumed sample key, per attempt and rank (mmcurate.pipeline.train.ledger)
  ray/                 Ray Train's run: checkpoints (each also an open_clip model directory)
  best/, final/        open_clip model directories: best validation loss, last step
  eval.json            retrieval recall on the held-out shards, with chance levels

Running the same command again with the same run directory resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmcurate.pipeline.train.config import TrainConfig
from mmcurate.pipeline.train.shards import count_all, expand_shards

log = logging.getLogger(__name__)

RAY_RUN_NAME = "ray"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    scorer_dir: Path  # best/ when validation ran, else final/: load with mmcurate.pipeline.train.load_scorer
    checkpoint: str | None  # the latest Ray Train checkpoint
    metrics: dict[str, Any]
    eval: dict[str, Any] | None


def resolve_shards(train_dir: Path, role: str, spec: str | list[str] | None) -> tuple[list[str], list[int]]:
    """Expand ``spec`` and count each shard's samples, reusing the counts stored by an earlier start of this run
    when the shard list is unchanged (so a resumed run builds the same epoch order without a recount)."""
    if spec is None:
        return [], []
    urls = expand_shards(spec)
    cache = train_dir / f"shards-{role}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["urls"] == urls:
            return urls, saved["counts"]
        log.warning("%s shards differ from the ones this run directory was started with; recounting", role)
    counts = count_all(urls)
    if sum(counts) == 0:
        raise ValueError(f"{role} shards {spec!r} hold no samples")
    cache.write_text(json.dumps({"urls": urls, "counts": counts}, indent=1))
    return urls, counts


def train(config: TrainConfig, run_dir: str | Path, *, ray_address: str | None = None) -> TrainResult:
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from mmcurate.pipeline.train.evaluate import evaluate_checkpoint
    from mmcurate.pipeline.train.loop import train_loop_per_worker
    from mmcurate.pipeline.train.model import resolve_model_config

    run_dir = Path(run_dir).resolve()
    train_dir = run_dir / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    resolve_model_config(config.model)  # an unknown model name fails here, before any worker starts

    train_urls, train_counts = resolve_shards(train_dir, "train", config.data.train_shards)
    val_urls, val_counts = resolve_shards(train_dir, "val", config.data.val_shards)
    eval_urls, eval_counts = resolve_shards(train_dir, "eval", config.data.eval_shards or config.data.val_shards)
    log.info(
        "training on %d samples in %d shards, %d epochs, %d workers (%s)", sum(train_counts), len(train_urls),
        config.epochs, config.scaling.num_workers, "GPU" if config.scaling.use_gpu else "CPU",
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
            "train_urls": train_urls,
            "train_counts": train_counts,
            "val_urls": val_urls,
            "val_counts": val_counts,
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
    if eval_urls:
        evaluation = evaluate_checkpoint(
            scorer_dir, eval_urls, eval_counts, ks=config.eval.recall_ks, batch_size=config.eval.batch_size,
            max_samples=config.eval.max_samples,
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
