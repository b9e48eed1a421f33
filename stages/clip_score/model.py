"""The scorer of the ``clip_score`` stage: a CLIP loaded once per worker, the id that names its weights, and its
encoders (text, image batches, waveform batches), each returning unit-norm float32 rows on the CPU. The text and
image towers run only the positions their pooled output reads (``towers.py``).

Where the weights come from (``ClipModelSpec``):
  * ``checkpoint``: a directory written by ``mmcurate train`` (``pipeline/train/checkpoint.py``), loaded through
    open_clip's own ``create_model_and_transforms("local-dir:" + dir)``; its ``audio_tower.pt`` too, when present.
  * ``name`` + ``pretrained`` = a weights file: open_clip builds ``name`` and loads the file.
  * ``name`` + ``pretrained`` = an open_clip tag: open_clip downloads the weights (or finds them in its cache).
    Offline and not cached, that fails; the error says how to give a file instead.

The model id names the weights, since a score compares only with scores of the same weights:
  name + tag            ``ViT-B-32-laion2b_s34b_b79k``
  name + weights file   ``ViT-B-32-3f2a9c01``  (8 hex digits of the file's sha256)
  checkpoint directory  ``mmcurate-demo-tiny-3f2a9c01``: the model name from the trainer's ``config.yaml`` beside
                        the directory (``RUN_DIR/train/{final,best}``; ``checkpoint`` when there is none), and 8 hex
                        digits of the sha256 over the CLIP weights and the audio tower's.
Score names are dot-separated (``clip_score.<id>.image_text``), so any character of an id outside
``[A-Za-z0-9_-]`` becomes ``_``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from mmcurate.schemas.stage_configs import ClipModelSpec, ClipScoreConfig
from mmcurate.stages.clip_score.towers import encode_pixels, encode_tokens

log = logging.getLogger(__name__)

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_for(config: ClipScoreConfig) -> torch.device:
    """CUDA when the stage reserves a GPU, else the CPU; a GPU asked for and not there is an error, not a
    silent fall back to a CPU a hundred times slower."""
    if config.num_gpus > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"clip_score reserves num_gpus={config.num_gpus} but torch sees no CUDA device "
                               f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return torch.device("cuda")
    return torch.device("cpu")


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", part)


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:8]


def _trained_name(checkpoint: Path) -> str:
    """The model name ``mmcurate train`` recorded in ``RUN_DIR/train/config.yaml``, beside final/ and best/."""
    import yaml

    config = checkpoint.parent / "config.yaml"
    if config.is_file():
        name = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("name")
        if name:
            return str(name)
    return "checkpoint"


@dataclass
class Scorer:
    clip: Any  # an open_clip model in eval mode, on ``device``
    preprocess: Callable  # the model's own eval image transform (PIL image -> float tensor)
    tokenizer: Callable[[list[str]], torch.Tensor]
    audio: Any  # pipeline.train.model.AudioTower in eval mode, or None
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None: fp32
    model_id: str
    dim: int = 0  # embedding width, set by ``load`` from a real forward pass

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        with self.autocast():
            return encode_tokens(self.clip, tokens.to(self.device)).float().cpu()

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels``: normalised float images on ``device`` (``media.ImagePreprocess.batch``)."""
        with self.autocast():
            return encode_pixels(self.clip, pixels).float().cpu()

    @torch.inference_mode()
    def encode_audio(self, waves: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return F.normalize(self.audio(waves.to(self.device)).float(), dim=-1).cpu()


def load(spec: ClipModelSpec, device: torch.device) -> Scorer:
    """The scorer ``spec`` names, on ``device``, with its id; one forward pass checks it runs there."""
    import open_clip

    audio = None
    if spec.checkpoint is not None:
        from mmcurate.pipeline.train.checkpoint import AUDIO_WEIGHTS, CLIP_CONFIG, CLIP_WEIGHTS, load_audio_tower

        root = Path(spec.checkpoint).resolve()
        weights = root / CLIP_WEIGHTS
        # open_clip builds a local-dir model with random weights (and a warning) when it finds no weights file
        if not (root / CLIP_CONFIG).is_file() or not weights.is_file():
            raise FileNotFoundError(f"model.checkpoint {root} is not an mmcurate training checkpoint: it needs "
                                    f"{CLIP_CONFIG} and {CLIP_WEIGHTS}")
        clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{root}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{root}")
        hashed = [weights]
        if (root / AUDIO_WEIGHTS).is_file():
            audio, _ = load_audio_tower(root, device=device)
            hashed.append(root / AUDIO_WEIGHTS)
        model_id = f"{_safe(_trained_name(root))}-{_sha256(hashed)}"
    else:
        name, pretrained = spec.name, spec.pretrained
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        except RuntimeError as err:
            raise RuntimeError(
                f"clip_score: open_clip could not load {name} with pretrained={pretrained!r}: {err}. Without "
                f"network access, copy the weights file to the workers and give its path as model.pretrained"
            ) from err
        tokenizer = open_clip.get_tokenizer(name)
        is_file = Path(pretrained).is_file()
        model_id = f"{_safe(name)}-{_sha256([Path(pretrained)]) if is_file else _safe(pretrained)}"
    clip.eval()
    scorer = Scorer(clip, preprocess, tokenizer, audio, device, _AMP[spec.precision], model_id)
    scorer.dim = int(scorer.encode_text(["a photo"]).shape[-1])
    log.info("clip_score model %s on %s (%s)%s", model_id, device, spec.precision,
             ", with an audio tower" if audio is not None else "")
    return scorer

