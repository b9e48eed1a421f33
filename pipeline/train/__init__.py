"""Contrastive multimodal pretraining on WebDataset shards with Ray Train (issue 3).

Heavy modules (torch, open_clip, ray) load on first use, so importing the config stays cheap.
"""

from __future__ import annotations

from typing import Any

from mmcurate.pipeline.train.config import TrainConfig

__all__ = ["TrainConfig", "train", "load_scorer"]


def train(config: TrainConfig, run_dir: Any, *, ray_address: str | None = None) -> Any:
    from mmcurate.pipeline.train.api import train as _train

    return _train(config, run_dir, ray_address=ray_address)


def load_scorer(checkpoint_dir: Any, device: str = "cpu") -> Any:
    """(model, preprocess, tokenizer) of a trained checkpoint, loaded through open_clip's ``local-dir:`` path."""
    from mmcurate.pipeline.train.checkpoint import load_scorer as _load

    return _load(checkpoint_dir, device=device)
