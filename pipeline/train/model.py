"""The trained model: an open_clip CLIP (by name or custom config) plus an optional CLAP-style audio tower.

The audio tower maps a waveform to the CLIP embedding space through a log-mel spectrogram and a small CNN; it is
trained against the same text tower, so image-text and audio-text pairs in one shard set train one model.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from mmcurate.pipeline.train.config import AudioTowerConfig, ModelConfig

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp: temperatures below 0.01 destabilise training

_registered: dict[str, dict[str, Any]] = {}


def register_model_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make a custom config loadable by name through open_clip's own factory (``open_clip.add_model_config``)."""
    if _registered.get(name) == model_cfg:
        return
    existing = open_clip.get_model_config(name)
    if existing is not None and name not in _registered and existing != model_cfg:
        raise ValueError(f"model.custom would shadow open_clip's built-in {name!r}: give the custom config a new name")
    # open_clip reads the file when it is added and skips a missing path on later rescans: the file need not
    # outlive the call (a directory per call, kept, left ~170 behind in /tmp over one test suite)
    with tempfile.TemporaryDirectory(prefix="mmcurate-model-cfg-") as directory:
        path = Path(directory) / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    _registered[name] = model_cfg


def resolve_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """The open_clip model config this run trains; registers ``cfg.custom`` under ``cfg.name``."""
    if cfg.custom is not None:
        register_model_config(cfg.name, dict(cfg.custom))
        return dict(cfg.custom)
    model_cfg = open_clip.get_model_config(cfg.name)
    if model_cfg is None:
        raise ValueError(
            f"{cfg.name!r} is not an open_clip model (see open_clip.list_models()) and model.custom is not set"
        )
    return model_cfg


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular filters on the HTK mel scale, ``[n_freqs, n_mels]``, Slaney area normalisation.

    Written out here because torchaudio cannot be installed beside this torch and librosa would add numba for one
    function; it follows the same definition as ``librosa.filters.mel(htk=True, norm="slaney")``."""
    f_max = f_max if f_max is not None else sample_rate / 2

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2)
    hz = mel_to_hz(mel_points).to(torch.float64)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower[None, :]) / (center - lower)[None, :]
    down = (upper[None, :] - freqs[:, None]) / (upper - center)[None, :]
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))[None, :]  # equal area per filter
    return fb.to(torch.float32)


class LogMel(nn.Module):
    """Waveform ``[B, T]`` -> standardised log-mel ``[B, 1, n_mels, frames]``, STFT computed with torch."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # the STFT runs in fp32 even under autocast: half-precision FFTs lose the quiet bands
        spec = torch.stft(
            wave.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        ).abs().pow(2)
        mel = torch.log(torch.einsum("bft,fm->bmt", spec, self.fb) + 1e-6)
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        return mel.unsqueeze(1)


class AudioTower(nn.Module):
    def __init__(self, cfg: AudioTowerConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg)
        blocks, c_in = [], 1
        for i in range(cfg.layers):
            c_out = cfg.width * min(2**i, 8)
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.GELU(),
                nn.AvgPool2d(2, ceil_mode=True),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.proj = nn.Linear(c_in, embed_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.frontend(wave))
        return self.proj(x.mean(dim=(2, 3)))


class ContrastiveModel(nn.Module):
    """Wraps the open_clip model (``.clip``) and the optional ``.audio`` tower behind one forward, so one DDP
    wrapper covers both. Missing modalities come back as zero rows; the caller's masks say which rows count."""

    def __init__(self, clip: nn.Module, audio: AudioTower | None):
        super().__init__()
        self.clip, self.audio = clip, audio
        if audio is not None:
            self.audio_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor | None = None,
        image_idx: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        audio_idx: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        t = self.clip.encode_text(text, normalize=True)
        out = {"text": t, "logit_scale": self.clip.logit_scale.exp(), "image": self._rows(t, image, image_idx, None)}
        if self.audio is not None:
            out["audio"] = self._rows(t, audio, audio_idx, self.audio)
            out["audio_logit_scale"] = self.audio_logit_scale.exp()
        return out

    def _rows(self, t: torch.Tensor, x: torch.Tensor | None, idx: torch.Tensor | None, tower: nn.Module | None):
        if x is None or x.shape[0] == 0:
            return t.new_zeros(t.shape)
        feats = self.clip.encode_image(x, normalize=True) if tower is None else F.normalize(tower(x), dim=-1)
        return feats.new_zeros(t.shape[0], feats.shape[1]).index_copy(0, idx, feats)

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if self.audio is not None:
            self.audio_logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def build_model(cfg: ModelConfig) -> tuple[ContrastiveModel, Callable, Callable, Callable, dict[str, Any]]:
    """(model, train image transform, eval image transform, tokenizer, open_clip model config)."""
    model_cfg = resolve_model_config(cfg)
    clip, train_tf, eval_tf = open_clip.create_model_and_transforms(cfg.name, pretrained=cfg.pretrained)
    tokenizer = open_clip.get_tokenizer(cfg.name)
    audio = AudioTower(cfg.audio, int(model_cfg["embed_dim"])) if cfg.audio is not None else None
    return ContrastiveModel(clip, audio), train_tf, eval_tf, tokenizer, model_cfg
