"""Checkpoint layout, and loading a trained model as a scorer through open_clip's own loader.

A checkpoint directory (every Ray Train checkpoint, and ``RUN_DIR/train/final`` / ``best``) holds:
  open_clip_config.json          {"model_cfg": ..., "preprocess_cfg": ...}  (the HF-hub / local-dir layout)
  open_clip_pytorch_model.bin    the CLIP state dict
  audio_tower.pt                 audio tower config + weights + its logit scale (only with an audio tower)
  trainer_state.pt               optimizer, schedule, scaler, counters, per-rank RNG  (Ray checkpoints only)
  data_state.json                epoch and the epoch positions not yet consumed      (Ray checkpoints only)

so ``open_clip.create_model_and_transforms("local-dir:" + dir)`` loads it exactly like a downloaded model.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import open_clip
import torch

from mmcurate.pipeline.train.config import AudioTowerConfig
from mmcurate.pipeline.train.model import AudioTower, ContrastiveModel

log = logging.getLogger(__name__)

CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
CLIP_CONFIG = "open_clip_config.json"
AUDIO_WEIGHTS = "audio_tower.pt"
TRAINER_STATE = "trainer_state.pt"
DATA_STATE = "data_state.json"


def export_model(model: ContrastiveModel, model_cfg: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = dict(getattr(model.clip.visual, "preprocess_cfg", {}) or {})
    (out / CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2))
    torch.save({k: v.detach().cpu() for k, v in model.clip.state_dict().items()}, out / CLIP_WEIGHTS)
    if model.audio is not None:
        torch.save(
            {
                "config": model.audio.cfg.model_dump(),
                "state_dict": {k: v.detach().cpu() for k, v in model.audio.state_dict().items()},
                "logit_scale": float(model.audio_logit_scale.detach().cpu()),
            },
            out / AUDIO_WEIGHTS,
        )
    return out


def load_model_weights(model: ContrastiveModel, checkpoint_dir: str | Path) -> None:
    d = Path(checkpoint_dir)
    model.clip.load_state_dict(torch.load(d / CLIP_WEIGHTS, map_location="cpu", weights_only=True))
    if model.audio is not None:
        saved = torch.load(d / AUDIO_WEIGHTS, map_location="cpu", weights_only=True)
        model.audio.load_state_dict(saved["state_dict"])
        with torch.no_grad():
            model.audio_logit_scale.fill_(saved["logit_scale"])


def load_scorer(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Callable, Callable]:
    """(model, eval preprocess, tokenizer) through ``open_clip``'s ``local-dir:`` path, model in eval mode."""
    d = Path(checkpoint_dir).resolve()
    if not (d / CLIP_CONFIG).is_file():
        raise FileNotFoundError(f"{d} has no {CLIP_CONFIG}: not an mmcurate training checkpoint")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
    model.eval()
    return model, preprocess, tokenizer


def load_audio_tower(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[AudioTower, float]:
    """(audio tower in eval mode, its logit scale) from a checkpoint trained with ``model.audio`` set."""
    saved = torch.load(Path(checkpoint_dir) / AUDIO_WEIGHTS, map_location="cpu", weights_only=True)
    clip_cfg = json.loads((Path(checkpoint_dir) / CLIP_CONFIG).read_text())["model_cfg"]
    tower = AudioTower(AudioTowerConfig(**saved["config"]), int(clip_cfg["embed_dim"]))
    tower.load_state_dict(saved["state_dict"])
    return tower.to(device).eval(), saved["logit_scale"]


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
