"""A batch's media decoded in the stage's worker threads (Pillow and libsndfile release the GIL while they decode,
resize and resample), and the model's own image transform cut in two so its tensor tail runs once per batch.

A medium that does not decode is a ``Failed`` value, not an exception: the stage turns it into that record's
reject row (``image_corrupt``, ``image_too_large``, ``audio_corrupt``) and scores the rest of the batch.
"""

from __future__ import annotations

import io
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from mmcurate.schemas.reasons import Reason


class Failed(NamedTuple):
    reason: Reason
    detail: str


class ImagePreprocess:
    """Image bytes -> the model's input, through the model's own eval transform (open_clip's: resize, centre crop,
    to tensor, normalise). The PIL steps run per image in the decode threads (``__call__``); when the transform ends
    in ToTensor + Normalize, those two run once per batch on the model's device (``batch``), on the same values
    in the same order, so the result is the transform's: the copy to a GPU is uint8 (4x smaller) and the
    normalisation one vector op. Any other transform runs whole, per image."""

    def __init__(self, transform: Callable, device: torch.device):
        from torchvision.transforms import Compose, Normalize, ToTensor

        steps = list(getattr(transform, "transforms", ()))
        self.split = len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize)
        self.device = device
        if self.split:
            self.per_image: Callable = Compose(steps[:-2])
            norm = steps[-1]
            self.mean = torch.as_tensor(norm.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.as_tensor(norm.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        else:
            self.per_image = transform

    def __call__(self, data: bytes) -> Any:
        """Decoded and transformed pixels of one image (HWC uint8 when split, else the transform's tensor), or
        ``Failed``. RGB before the transform, as the trainer's decoder does (``pipeline/train/data.py``)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")  # decodes the whole image: truncated files fail here
        except Image.DecompressionBombError as err:
            return Failed(Reason.IMAGE_TOO_LARGE, str(err))
        except Exception as err:  # Pillow raises many types for bad bytes
            return Failed(Reason.IMAGE_CORRUPT, f"{type(err).__name__}: {err}")
        out = self.per_image(rgb)
        return np.asarray(out) if self.split else out

    def batch(self, items: list[Any]) -> torch.Tensor:
        """What ``__call__`` gave for several images -> one normalised float batch on the device."""
        if not self.split:
            return torch.stack(items).to(self.device)
        pixels = torch.from_numpy(np.stack(items))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        # ToTensor's exact steps (CHW, contiguous, float / 255), then Normalize's (subtract, divide)
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float().div_(255)
        return x.sub_(self.mean).div_(self.std)


def decode_audio(data: bytes, cfg: Any) -> torch.Tensor | Failed:
    """A waveform as the audio tower was trained on (``pipeline.train.data.load_waveform``: mono, the tower's
    rate, its first ``clip_seconds``), or ``Failed``."""
    from mmcurate.pipeline.train.data import SkipSample, load_waveform

    try:
        return load_waveform(data, cfg)
    except SkipSample as err:
        return Failed(Reason.AUDIO_CORRUPT, err.detail.removeprefix(": "))
