"""Loader throughput against the model's step consumption rate, for the demo training config.

    .venv/bin/python tests/bench/bench_loader.py [CONFIG] [--steps N] [--set key=value ...]

Prints one ``name: value`` line per figure, the ratio first: a ratio below 1 means training would wait on data
(raise data.loader_workers). Both rates are for one training worker: the loader with the config's
loader_workers and batch size, the model doing forward + backward + AdamW on batches from that loader. Uses
``runs/demo/shards`` when it exists, else synthesises shards of coloured shapes and tones in a temp directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mmcurate.pipeline.train.config import TrainConfig, apply_overrides  # noqa: E402
from mmcurate.pipeline.train.data import Decoder, ShardStream, make_loader  # noqa: E402
from mmcurate.pipeline.train.loop import param_groups  # noqa: E402
from mmcurate.pipeline.train.loss import MaskedClipLoss  # noqa: E402
from mmcurate.pipeline.train.model import build_model  # noqa: E402
from mmcurate.pipeline.train.order import assign  # noqa: E402
from mmcurate.pipeline.train.shards import count_all, expand_shards  # noqa: E402

log = logging.getLogger("bench_loader")


def shards_for(cfg: TrainConfig, workdir: Path) -> list[str]:
    try:
        return expand_shards(cfg.data.train_shards)
    except FileNotFoundError:
        from mmcurate.pipeline.train.synthetic import records
        from mmcurate.stages.shard import write_shards

        size = int((cfg.model.custom or {}).get("vision_cfg", {}).get("image_size", 64))
        log.info("%s matches nothing: synthesising 2048 samples (%dpx images, every 4th a tone)",
                 cfg.data.train_shards, size)
        infos = write_shards(records(2048, seed=0, audio_every=4, image_size=size), workdir, samples_per_shard=256)
        return [i.path for i in infos]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(REPO / "workflows" / "train_demo.yaml"))
    parser.add_argument("--steps", type=int, default=20, help="model steps to time")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    cfg = TrainConfig.model_validate(apply_overrides(raw, args.overrides))
    os.chdir(REPO)  # the demo config's shard glob is relative to the repository
    torch.manual_seed(0)
    model, train_tf, _, tokenizer, _ = build_model(cfg.model)
    with tempfile.TemporaryDirectory(prefix="mmcurate-bench-") as tmp:
        urls = shards_for(cfg, Path(tmp))
        counts = count_all(urls)
        d = cfg.data

        def loader(epoch: int):
            ds = ShardStream(urls, counts, assignment=assign([(0, sum(counts))], 1, d.loader_workers)[0],
                             consumer_base=0, seed=d.seed, epoch=epoch, block=d.shuffle_block,
                             shuffle_shards=d.shuffle_shards, batch_size=d.batch_size,
                             decoder=Decoder(tokenizer, train_tf, cfg.model.audio))
            return make_loader(ds, loader_workers=d.loader_workers, prefetch_batches=d.prefetch_batches,
                               pin_memory=False)

        # loader alone: one full epoch, timed from the first batch so worker start-up does not count
        n, batches, t0 = 0, [], None
        for batch in loader(0):
            if t0 is None:
                t0 = time.perf_counter()
            else:
                n += len(batch["keys"])
            if len(batches) < args.steps + 2 and batch["keys"]:
                batches.append(batch)
        loader_rate = n / (time.perf_counter() - t0)

        # model alone: forward + backward + AdamW on batches already in memory
        opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
        loss_fn = MaskedClipLoss()
        model.train()
        m, t1 = 0, None
        for i, b in enumerate(batches[: args.steps + 1]):
            if i == 1:
                t1 = time.perf_counter()  # the first step pays one-off allocation costs
            out = model(b["text"], b["image"], b["image_idx"], b["audio"], b["audio_idx"])
            total = 0
            for name, scale in (("image", "logit_scale"), ("audio", "audio_logit_scale")):
                if name in out:
                    mask = torch.zeros(len(b["keys"]), dtype=torch.bool)
                    mask[b[f"{name}_idx"]] = True
                    loss = loss_fn(out[name], out["text"], out[scale], mask)
                    total = total + (loss if loss is not None else 0)
            opt.zero_grad()
            total.backward()
            opt.step()
            m += len(b["keys"]) if i >= 1 else 0
        step_rate = m / (time.perf_counter() - t1)

    figures = {
        "loader_to_step_ratio": loader_rate / step_rate,
        "loader_samples_per_s": loader_rate,
        "step_samples_per_s": step_rate,
        "samples": sum(counts),
        "shards": len(urls),
        "batch_size": d.batch_size,
        "loader_workers": d.loader_workers,
        "model": cfg.model.name,
        "audio_tower": cfg.model.audio is not None,
        "torch_threads": torch.get_num_threads(),
    }
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
