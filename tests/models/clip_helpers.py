"""A tiny CLIP with an audio tower, really trained (a plain torch loop, ~20 s on 2 CPU cores) on synthetic
"a <colour> <shape>" images and "a <pitch> <timbre>" tones, exported with the trainer's own ``export_model``; and
record batches in ``RECORD_SCHEMA`` for the stage. Imported as ``clip_helpers`` (pytest puts this folder on
sys.path)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml

from mmcurate.pipeline.train.checkpoint import export_model
from mmcurate.pipeline.train.config import AudioTowerConfig, DataConfig, ModelConfig, TrainConfig
from mmcurate.pipeline.train.data import load_waveform
from mmcurate.pipeline.train.loss import MaskedClipLoss
from mmcurate.pipeline.train.model import ContrastiveModel, build_model
from mmcurate.pipeline.train.synthetic import COLOURS, PITCHES, SHAPES, TIMBRES, shape_image, tone_flac
from mmcurate.schemas.record import RECORD_SCHEMA, empty_record, stable_key

MODEL_NAME = "mmcurate-clip-score-tiny"
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TONE_SECONDS = 0.5
AUDIO = AudioTowerConfig(sample_rate=16_000, clip_seconds=TONE_SECONDS, n_fft=256, hop_length=128, n_mels=32,
                         width=8, layers=3)
MODEL_CONFIG = ModelConfig(name=MODEL_NAME, custom=TINY_CLIP, audio=AUDIO)


def shape_caption(rng: np.random.Generator) -> tuple[str, str]:
    return str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))


def tone_caption(rng: np.random.Generator) -> tuple[str, str]:
    return str(rng.choice(list(PITCHES))), str(rng.choice(TIMBRES))


def train_tiny_clip(steps: int = 250, seed: int = 0) -> tuple[ContrastiveModel, dict[str, Any]]:
    """Image–text and audio–text contrastive training from scratch; learns both pairings (held-out AUC > 0.99)."""
    from PIL import Image

    torch.manual_seed(seed)
    model, _, eval_tf, tokenizer, model_cfg = build_model(MODEL_CONFIG)
    rng = np.random.default_rng(seed + 1)
    pixels, captions = [], []
    for _ in range(2048):
        colour, shape = shape_caption(rng)
        captions.append(f"a {colour} {shape}")
        with Image.open(io.BytesIO(shape_image(colour, shape, rng, 32))) as img:
            pixels.append(eval_tf(img.convert("RGB")))
    images, image_text = torch.stack(pixels), tokenizer(captions)
    waves, tone_captions = [], []
    for _ in range(512):
        pitch, timbre = tone_caption(rng)
        tone_captions.append(f"a {pitch} {timbre}")
        waves.append(load_waveform(tone_flac(pitch, timbre, rng, seconds=TONE_SECONDS), AUDIO))
    audio, audio_text = torch.stack(waves), tokenizer(tone_captions)

    loss = MaskedClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        i, j = torch.randint(0, len(images), (64,)), torch.randint(0, len(audio), (32,))
        out = model(image_text[i], image=images[i], image_idx=torch.arange(64))
        total = loss(out["image"], out["text"], out["logit_scale"], torch.ones(64, dtype=torch.bool))
        out = model(audio_text[j], audio=audio[j], audio_idx=torch.arange(32))
        total = total + loss(out["audio"], out["text"], out["audio_logit_scale"], torch.ones(32, dtype=torch.bool))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.clamp_logit_scales()
    return model.eval(), model_cfg


def export_as_trained(model: ContrastiveModel, model_cfg: dict[str, Any], run_dir: Path) -> Path:
    """``RUN_DIR/train/final`` as ``mmcurate train`` leaves it: the export, and the run's config.yaml beside it."""
    train_dir = run_dir / "train"
    train_dir.mkdir(parents=True)
    config = TrainConfig(data=DataConfig(train_shards="unused/*.tar"), model=MODEL_CONFIG)
    (train_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return export_model(model, model_cfg, train_dir / "final")


def jpeg_shape(colour: str, shape: str, rng: np.random.Generator, size: int = 64) -> bytes:
    """Larger than the model's 32 px input, as JPEG: the stage's resize and JPEG decode are exercised."""
    return shape_image(colour, shape, rng, size, fmt="jpg")


def image_record(i: int, image: bytes | None, text: str | None, **values: Any) -> dict[str, Any]:
    return empty_record(key=stable_key("clip-test", i), image=image, image_format="jpg" if image else None,
                        text=text, text_source="caption" if text else None, **values)


def audio_record(i: int, audio: bytes | None, text: str | None, **values: Any) -> dict[str, Any]:
    return empty_record(key=stable_key("clip-test", i), audio=audio, audio_format="flac", audio_rate=16_000,
                        audio_seconds=TONE_SECONDS, text=text, text_source="caption" if text else None, **values)


def table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def auc(positives: list[float], negatives: list[float]) -> float:
    """ROC AUC: the chance a random positive outscores a random negative (ties count half)."""
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())
