"""The Ray Train worker loop: ``train_loop_per_worker(inputs)`` runs once per worker process.

Per step every rank: takes its next batch (or none once its share of the epoch is done) -> all ranks exchange
batch sizes -> pad to the largest -> forward, gather features across ranks, masked contrastive loss -> AdamW step.
The epoch ends when no rank has a batch left, so no rank waits on another and no sample is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
import torch.distributed as dist

from mmcurate.pipeline.train.checkpoint import (
    DATA_STATE,
    TRAINER_STATE,
    export_model,
    load_model_weights,
    rng_state,
    set_rng_state,
)
from mmcurate.pipeline.train.config import OptimConfig, TrainConfig
from mmcurate.pipeline.train.data import Decoder, ShardStream, make_loader
from mmcurate.pipeline.train.ledger import LedgerWriter, record_attempt
from mmcurate.pipeline.train.loss import MaskedClipLoss
from mmcurate.pipeline.train.manifest import ShardsChanged, changed_message
from mmcurate.pipeline.train.model import ContrastiveModel, build_model
from mmcurate.pipeline.train.order import Interval, assign, normalize, take, total

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything about where training stands, apart from weights and optimizer moments."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0
    remaining: list[Interval] | None = None  # epoch positions still to consume; None between epochs
    best_val: float = math.inf
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[str] = field(default_factory=list)  # ids of the checkpoints this run descends from


def lr_at(cfg: OptimConfig, samples_seen: int, total_samples: int) -> float:
    """Linear warmup then cosine decay, as a function of samples seen so it does not depend on the world size."""
    progress = min(1.0, samples_seen / max(1, total_samples))
    if progress < cfg.warmup_fraction:
        return cfg.lr * (progress + 1.0 / max(1, total_samples)) / cfg.warmup_fraction
    rest = (progress - cfg.warmup_fraction) / max(1e-12, 1.0 - cfg.warmup_fraction)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * rest)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's rule: no decay on gains, biases, norms, embeddings of rank < 2 and temperatures
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _setup_logging() -> None:
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class WorkerLoop:
    def __init__(self, inputs: dict[str, Any]):
        import ray.train
        import ray.train.torch

        _setup_logging()
        self.cfg = TrainConfig.model_validate(inputs["config"])
        self.train_dir = Path(inputs["run_dir"]) / "train"
        # urls name the shards (resume identity), paths are what is read (local ones resolved to real paths)
        self.urls, self.counts = inputs["train_urls"], inputs["train_counts"]
        self.paths, self.digests = inputs.get("train_paths") or self.urls, inputs.get("train_digests")
        self.val_urls, self.val_counts = inputs.get("val_paths") or [], inputs.get("val_counts") or []
        self.n_samples = sum(self.counts)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.distributed = self.world > 1 and dist.is_available() and dist.is_initialized()
        self.device = ray.train.torch.get_device()

        torch.manual_seed(self.cfg.data.seed)  # identical initial weights on every rank
        model, self.train_tf, self.eval_tf, self.tokenizer, self.model_cfg = build_model(self.cfg.model)
        self.model: ContrastiveModel = model
        self.progress = Progress()
        self.checkpoint_root = inputs["checkpoint_root"]
        checkpoint = self._latest_checkpoint()
        trainer_state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                load_model_weights(self.model, d)
                trainer_state = torch.load(Path(d) / TRAINER_STATE, map_location="cpu", weights_only=False)
                data_state = json.loads((Path(d) / DATA_STATE).read_text())
            self._check_data_state(data_state)
        self.ddp = ray.train.torch.prepare_model(
            self.model,
            # with an audio tower a rank's batch may hold no image (or no audio) at all
            parallel_strategy_kwargs={"find_unused_parameters": self.cfg.model.audio is not None},
        )
        o = self.cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss = MaskedClipLoss(rank=self.rank, world_size=self.world if self.distributed else 1)
        self.local_loss = MaskedClipLoss()
        if trainer_state is not None:
            self._restore(trainer_state)
        else:
            torch.manual_seed(self.cfg.data.seed * 1000 + self.rank)

        self.attempt = self._broadcast(uuid.uuid4().hex[:12])
        self.n_checkpoints = 0
        resumed_from = self.progress.history[-1] if self.progress.history else None
        self.ledger = LedgerWriter(self.train_dir, self.attempt, self.rank, enabled=self.cfg.logging.record_keys)
        if self.rank == 0:
            record_attempt(
                self.train_dir, self.attempt, resumed_from, world_size=self.world, step=self.progress.step,
                epoch=self.progress.epoch, started_at=time.time(),
            )
            log.info(
                "attempt %s: %d workers, %s, from step %d (epoch %d)%s", self.attempt, self.world, self.device,
                self.progress.step, self.progress.epoch, f", resumed from {resumed_from}" if resumed_from else "",
            )
        self.dummy_image = self.eval_tf(Image.new("RGB", (8, 8)))
        self.context_length = int(self.tokenizer(["x"]).shape[1])
        self._window = {"loss": 0.0, "steps": 0, "samples": 0, "wait": 0.0, "t0": time.perf_counter()}
        self._skips: dict[str, int] = {}  # reason -> samples consumed without training since the last log line

    # ---- state ------------------------------------------------------------------------------------------
    def _latest_checkpoint(self) -> Any:
        """The newest complete checkpoint: Ray Train's latest registered one, or the one our own record names.

        Ray registers a checkpoint only when its controller next polls the workers, so a worker killed right
        after an upload can leave Ray pointing at an older checkpoint (or at none, after a failed run). Rank 0
        appends each checkpoint to ``checkpoints.jsonl`` once its upload returned; the newer of the two wins."""
        import ray.train

        candidates = [c for c in [ray.train.get_checkpoint()] if c is not None]
        record = self.train_dir / "checkpoints.jsonl"
        lines = [json.loads(x) for x in record.read_text().splitlines() if x.strip()] if record.is_file() else []
        candidates += [ray.train.Checkpoint(path=line["path"]) for line in reversed(lines) if line.get("path")][:3]
        best, best_seen = None, -1
        for candidate in candidates:
            try:
                with candidate.as_directory() as d:
                    seen = json.loads((Path(d) / DATA_STATE).read_text())["samples_seen"]
            except (FileNotFoundError, OSError, KeyError, ValueError):
                continue  # deleted by num_to_keep, or an upload that never completed
            if seen > best_seen:
                best, best_seen = candidate, seen
        return best

    def _amp_dtype(self) -> torch.dtype | None:
        precision = self.cfg.model.precision
        if precision == "auto":
            ok = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if ok else None
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def _check_data_state(self, data_state: dict[str, Any]) -> None:
        if data_state["counts"] != list(self.counts) or data_state["urls"] != list(self.urls):
            raise RuntimeError(
                "the training shards changed since the checkpoint was written; resuming would break the epoch "
                "order. Start a new run directory, or restore the original shards."
            )
        # the driver checked shards-train.json already; this also covers a checkpoint Ray registered that the
        # driver's record (checkpoints.jsonl) never saw. Checkpoints from before digests carry none.
        recorded = data_state.get("digests")
        if recorded is not None and self.digests is not None and recorded != list(self.digests):
            changed = [u for u, a, b in zip(self.urls, recorded, self.digests) if a != b]
            raise ShardsChanged(changed_message(f"checkpoint {data_state.get('checkpoint_id')}", changed))
        self._data_state = data_state

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.progress = Progress(**{**p, "remaining": None})
        remaining = self._data_state["remaining"]
        self.progress.remaining = [tuple(x) for x in remaining] if remaining is not None else None
        rngs = state["rng"]
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        else:  # more workers than when the checkpoint was written: fresh, but still a function of the position
            torch.manual_seed(self.cfg.data.seed * 1000 + self.rank + 7919 * self.progress.step)

    # ---- collectives --------------------------------------------------------------------------------------
    def _broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _gather_ints(self, value: int) -> list[int]:
        if not self.distributed:
            return [value]
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        parts = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return [int(p.item()) for p in parts]

    def _sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> None:
        while self.progress.epoch < self.cfg.epochs and not self.progress.stopped_early:
            self._run_epoch()
            if not self.progress.stopped_early:
                self.progress.epoch += 1
                self.progress.remaining = None
                if self.cfg.early_stopping.val_every_n_steps is None:
                    self._validate()
            self._checkpoint()
        if self.rank == 0:
            export_model(self.model, self.model_cfg, self.train_dir / "final")
            log.info("training done at step %d; final weights in %s", self.progress.step, self.train_dir / "final")
        self.ledger.close()

    def _run_epoch(self) -> None:
        cfg, epoch = self.cfg, self.progress.epoch
        if self.progress.remaining is None:
            self.progress.remaining = [(0, self.n_samples)]
        workers = cfg.data.loader_workers
        self.assignment = assign(self.progress.remaining, self.world, workers)[self.rank]
        self.consumed = [0] * len(self.assignment)
        self.consumer_base = self.rank * len(self.assignment)
        dataset = ShardStream(
            self.paths, self.counts, assignment=self.assignment, consumer_base=self.consumer_base,
            seed=cfg.data.seed, epoch=epoch, block=cfg.data.shuffle_block, shuffle_shards=cfg.data.shuffle_shards,
            batch_size=cfg.data.batch_size, decoder=Decoder(self.tokenizer, self.train_tf, cfg.model.audio),
            on_corrupt=cfg.data.on_corrupt,
        )
        loader = make_loader(
            dataset, loader_workers=workers, prefetch_batches=cfg.data.prefetch_batches,
            pin_memory=self.device.type == "cuda",
        )
        bar = self._progress_bar(epoch)
        it, exhausted = iter(loader), False
        while True:
            t0 = time.perf_counter()
            batch = None
            while batch is None and not exhausted:
                try:
                    candidate = next(it)
                except StopIteration:
                    exhausted = True
                    break
                self._account(candidate)
                if candidate["keys"]:
                    batch = candidate
            wait = time.perf_counter() - t0
            sizes = self._gather_ints(len(batch["keys"]) if batch else 0)
            if max(sizes) == 0:
                break
            loss = self._step(batch, max(sizes))
            self.progress.step += 1
            self.progress.samples_seen += sum(sizes)
            self._log_step(loss, sum(sizes), wait, bar)
            self._maybe_chaos()
            every = cfg.early_stopping.val_every_n_steps
            if every is not None and self.progress.step % every == 0:
                self._validate()
            if self.progress.stopped_early:
                self._checkpoint()
                break
            if self.progress.step % cfg.checkpoint.every_n_steps == 0:
                self._checkpoint()
        if bar is not None:
            bar.close()

    def _account(self, batch: dict[str, Any]) -> None:
        """The batch is taken: move its consumer's cursor and write it to the ledger."""
        self.consumed[batch["consumer"] - self.consumer_base] = batch["cursor"]
        self.ledger.batch(self.progress.epoch, self.progress.step + 1, batch["keys"], batch["skipped"])
        for _, reason in batch["skipped"]:
            self._skips[reason] = self._skips.get(reason, 0) + 1

    def _remaining_local(self) -> list[Interval]:
        rest: list[Interval] = []
        for intervals, n in zip(self.assignment, self.consumed):
            rest.extend(take(intervals, n)[1])
        return rest

    def _pad(self, batch: dict[str, Any] | None, size: int) -> dict[str, Any]:
        """Pad to ``size`` rows with text-only dummies (plus dummy images when every real row has one, so the
        image tower runs on every rank and DDP sees all parameters used)."""
        n = len(batch["keys"]) if batch else 0
        text = batch["text"] if batch else torch.zeros(0, self.context_length, dtype=torch.long)
        pad = size - n
        out = {
            "text": torch.cat([text, torch.zeros(pad, self.context_length, dtype=torch.long)]),
            "valid": torch.arange(size) < n,
            "image": batch["image"] if batch else None,
            "image_idx": batch["image_idx"] if batch else torch.zeros(0, dtype=torch.long),
            "audio": batch["audio"] if batch else None,
            "audio_idx": batch["audio_idx"] if batch else torch.zeros(0, dtype=torch.long),
        }
        if self.model.audio is None and pad:
            dummies = self.dummy_image.unsqueeze(0).expand(pad, *self.dummy_image.shape)
            out["image"] = dummies.clone() if out["image"] is None else torch.cat([out["image"], dummies])
            out["image_idx"] = torch.cat([out["image_idx"], torch.arange(n, size)])
        return out

    def _features(self, model: torch.nn.Module, b: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.device
        move = lambda x: x.to(dev, non_blocking=True) if x is not None else None  # noqa: E731
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return model(move(b["text"]), move(b["image"]), move(b["image_idx"]), move(b["audio"]), move(b["audio_idx"]))

    def _losses(self, loss_fn: MaskedClipLoss, out: dict[str, torch.Tensor], b: dict[str, Any]):
        valid = b["valid"].to(self.device)
        losses = {}
        for name, scale in (("image", "logit_scale"), ("audio", "audio_logit_scale")):
            if name not in out:
                continue
            mask = torch.zeros_like(valid)
            mask[b[f"{name}_idx"].to(self.device)] = True
            value = loss_fn(out[name].float(), out["text"].float(), out[scale].float(), mask & valid)
            if value is not None:
                losses[f"{name}_text"] = value
        return losses

    def _step(self, batch: dict[str, Any] | None, size: int) -> dict[str, float]:
        self.ddp.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.cfg.optim, self.progress.samples_seen, self.cfg.epochs * self.n_samples)
        b = self._pad(batch, size)
        out = self._features(self.ddp, b)
        losses = self._losses(self.loss, out, b)
        loss = sum(losses.values())
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scales()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}}

    # ---- observability ------------------------------------------------------------------------------------
    def _progress_bar(self, epoch: int) -> Any:
        if self.rank != 0 or not self.cfg.logging.progress_bar:
            return None
        from ray.experimental.tqdm_ray import tqdm

        steps = math.ceil(total(self.progress.remaining) / (self.cfg.data.batch_size * self.world))
        return tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}")

    def _log_step(self, loss: dict[str, float], samples: int, wait: float, bar: Any) -> None:
        w = self._window
        w["loss"] += loss["loss"]
        w["steps"] += 1
        w["samples"] += samples
        w["wait"] += wait
        if bar is not None:
            bar.update(1)
        if self.progress.step % self.cfg.logging.every_n_steps != 0:
            return
        elapsed = max(1e-9, time.perf_counter() - w["t0"])
        skipped: dict[str, int] = {}
        for part in self._gather_objects(self._skips):  # every rank logs at the same steps, so this pairs up
            for reason, n in part.items():
                skipped[reason] = skipped.get(reason, 0) + n
        self._skips = {}
        record = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "loss": w["loss"] / w["steps"],
            **{f"loss_{k}": v for k, v in loss.items() if k != "loss"},
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": w["samples"] / elapsed,
            "data_wait_fraction": min(1.0, w["wait"] / elapsed),
            "skipped": skipped,
        }
        if self.rank == 0:
            self._append_metrics(record)
        self._window = {"loss": 0.0, "steps": 0, "samples": 0, "wait": 0.0, "t0": time.perf_counter()}

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.train_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _maybe_chaos(self) -> None:
        chaos = self.cfg.chaos
        if chaos.kill_at_step != self.progress.step or chaos.kill_rank != self.rank:
            return
        marker = self.train_dir / "chaos-killed"
        if marker.exists():
            return
        marker.touch()
        log.warning("chaos: rank %d SIGKILLs itself after step %d", self.rank, self.progress.step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

    # ---- validation and checkpoints -----------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self) -> None:
        if not self.val_urls:
            return
        self.model.eval()
        dataset = ShardStream(
            self.val_urls, self.val_counts, assignment=assign([(0, sum(self.val_counts))], self.world, 0)[self.rank],
            consumer_base=self.rank, seed=0, epoch=0, block=1, shuffle_shards=False,
            batch_size=self.cfg.data.batch_size, decoder=Decoder(self.tokenizer, self.eval_tf, self.cfg.model.audio),
        )
        loss_sum, count = 0.0, 0
        for batch in make_loader(dataset, loader_workers=0, prefetch_batches=1, pin_memory=False):
            n = len(batch["keys"])
            if n < 2:  # a contrastive loss over one pair is zero by construction
                continue
            b = self._pad(batch, n)
            losses = self._losses(self.local_loss, self._features(self.model, b), b)
            loss_sum += float(sum(losses.values())) * n
            count += n
        loss_sum, count = self._sum(loss_sum, count)
        if count == 0:
            log.warning("validation shards gave no batch of 2 or more samples; skipping validation")
            return
        val = loss_sum / count
        es, p = self.cfg.early_stopping, self.progress
        improved = val < p.best_val - es.min_delta
        p.best_val, p.bad_validations = (val, 0) if improved else (p.best_val, p.bad_validations + 1)
        p.stopped_early = p.bad_validations >= es.patience
        if self.rank == 0:
            self._append_metrics({"step": p.step, "epoch": p.epoch, "val_loss": val, "val_samples": int(count)})
            if improved:
                export_model(self.model, self.model_cfg, self.train_dir / "best")
            if p.stopped_early:
                log.info("early stop at step %d: val loss %.4f, best %.4f", p.step, val, p.best_val)

    def _checkpoint(self) -> None:
        import ray.train

        in_epoch = self.progress.remaining is not None
        gathered = self._gather_objects((self._remaining_local() if in_epoch else [], rng_state()))
        self.n_checkpoints += 1
        checkpoint_id = f"{self.attempt}-{self.n_checkpoints}"
        self.ledger.commit(checkpoint_id)
        p = self.progress
        metrics = {"step": p.step, "epoch": p.epoch, "samples_seen": p.samples_seen, "checkpoint_id": checkpoint_id}
        p.history.append(checkpoint_id)
        if self.rank != 0:
            ray.train.report(dict(metrics))
            return
        remaining = normalize([iv for rem, _ in gathered for iv in rem]) if in_epoch else None
        progress = asdict(p) | {"remaining": None}
        with tempfile.TemporaryDirectory(prefix="mmcurate-ckpt-") as tmp:
            export_model(self.model, self.model_cfg, tmp)
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "schedule": {"samples_seen": p.samples_seen, "total_samples": self.cfg.epochs * self.n_samples},
                    "progress": progress,
                    "rng": [r for _, r in gathered],
                    "checkpoint_id": checkpoint_id,
                },
                Path(tmp) / TRAINER_STATE,
            )
            data_state = {
                "epoch": p.epoch, "remaining": remaining, "urls": list(self.urls), "counts": list(self.counts),
                "digests": list(self.digests) if self.digests is not None else None,
                "step": p.step, "samples_seen": p.samples_seen, "checkpoint_id": checkpoint_id,
            }
            (Path(tmp) / DATA_STATE).write_text(json.dumps(data_state))
            name = f"checkpoint-{p.step:08d}-{checkpoint_id}"
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
        metrics["path"] = f"{self.checkpoint_root.rstrip('/')}/{name}"
        with open(self.train_dir / "checkpoints.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics | {"remaining": total(remaining) if remaining else 0}) + "\n")


def train_loop_per_worker(inputs: dict[str, Any]) -> None:
    """Entry point Ray Train runs in every worker process (see ``mmcurate.pipeline.train.api.train``)."""
    WorkerLoop(inputs).run()
