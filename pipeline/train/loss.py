"""Contrastive loss over features gathered from every rank, with a row mask.

open_clip's ``ClipLoss`` does the gathering (``get_logits``; the local rank's slice keeps its gradient). The mask
says which gathered rows are real pairs of this modality: rows padded to equalise batch sizes across ranks and
samples without this modality (an audio-only sample in the image-text loss) are dropped from both sides of the
logit matrix, so they contribute nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss


class MaskedClipLoss(ClipLoss):
    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__(local_loss=False, gather_with_grad=False, rank=rank, world_size=world_size)

    def forward(  # type: ignore[override]
        self, features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """Symmetric InfoNCE over the rows where ``mask`` (gathered) is true; None when no rank has one."""
        if self.world_size > 1:
            parts = [torch.zeros_like(mask, dtype=torch.float32) for _ in range(self.world_size)]
            dist.all_gather(parts, mask.to(torch.float32))
            mask = torch.cat(parts) > 0.5
        keep = mask.nonzero().squeeze(1)
        logits_a, logits_t = self.get_logits(features, text_features, logit_scale)
        if keep.numel() == 0:
            return None
        logits_a = logits_a.index_select(0, keep).index_select(1, keep)
        logits_t = logits_t.index_select(0, keep).index_select(1, keep)
        labels = torch.arange(keep.numel(), device=logits_a.device)
        return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels)) / 2
