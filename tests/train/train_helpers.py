"""Helpers shared by the trainer tests (imported as ``train_helpers``: pytest puts this folder on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from mmcurate.pipeline.train.synthetic import records
from mmcurate.stages.shard import write_shards

# learns "a <colour> <shape>" on a CPU in seconds (shared ENVIRONMENT notes)
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_config(train: str, *, val: str | None = None, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data": {"train_shards": train, "val_shards": val, "batch_size": 32, "loader_workers": 1, "shuffle_block": 256},
        "model": {"name": "mmcurate-test-tiny", "custom": TINY_CLIP},
        "optim": {"lr": 5e-4, "weight_decay": 0.1},
        "scaling": {"num_workers": 2},
        "logging": {"every_n_steps": 4, "progress_bar": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


def write_synthetic(out_dir: Path, n: int, *, seed: int, per_shard: int, **kw: Any) -> list[str]:
    infos = write_shards(records(n, seed=seed, **kw), out_dir, samples_per_shard=per_shard)
    return [i.path for i in infos]


TRY_EXCLUSIVE = """
import fcntl, sys
with open(sys.argv[1], "a") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("blocked")
    else:
        print("acquired")
"""


def exclusive_from_another_process(path: Path) -> str:
    """What the pipeline sees when it tries to delete a shard generation: ``blocked`` or ``acquired``."""
    out = subprocess.run([sys.executable, "-c", TRY_EXCLUSIVE, str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()
