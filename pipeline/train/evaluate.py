"""Zero-shot retrieval recall on held-out shards, with the chance level beside every figure.

Captions repeat in many data sets (and in synthetic ones by design), so a retrieved item counts as correct when
its caption text equals the query's: the exact-index convention would cap recall@1 at 1/duplicates. Media -> text
therefore ranks the distinct captions, text -> media queries once per distinct caption. The chance level uses
the same rule: for a query with ``m`` correct items among ``n``, chance@k = 1 - C(n-m, k) / C(n, k).
"""

from __future__ import annotations

import logging
from collections import Counter
from math import comb
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from mmcurate.pipeline.train.checkpoint import AUDIO_WEIGHTS, load_audio_tower, load_scorer
from mmcurate.pipeline.train.config import AudioTowerConfig
from mmcurate.pipeline.train.data import Decoder, ShardStream, make_loader
from mmcurate.pipeline.train.order import assign

log = logging.getLogger(__name__)


def recall_at_k(
    queries: torch.Tensor, targets: torch.Tensor, query_text: Sequence[str], target_text: Sequence[str], ks: Sequence[int]
) -> dict[str, float]:
    """Share of queries with a correct target (same caption text) among their top k."""
    sims = queries.float() @ targets.float().T
    top = sims.topk(min(max(ks), targets.shape[0]), dim=1).indices
    hits = torch.tensor([[target_text[j] == query_text[i] for j in row] for i, row in enumerate(top.tolist())])
    return {f"recall@{k}": float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


def chance_at_k(n_targets: int, correct_per_query: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Expected recall@k of a random ranking: 1 - C(n - m, k) / C(n, k), averaged over queries."""
    out = {}
    for k in ks:
        k_eff = min(k, n_targets)
        total = sum(1 - comb(n_targets - m, k_eff) / comb(n_targets, k_eff) for m in correct_per_query)
        out[f"recall@{k}"] = total / len(correct_per_query)
    return out


def _pair_block(feats: torch.Tensor, text: torch.Tensor, captions: list[str], ks: Sequence[int], name: str) -> dict:
    """Media -> text retrieves among the distinct captions (copies of one caption embed identically, so they
    would fill the top k); text -> media queries with each distinct caption over all items."""
    first: dict[str, int] = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)
    distinct = list(first)
    distinct_text = text[list(first.values())]
    per_caption = Counter(captions)
    return {
        "samples": len(captions),
        "distinct_captions": len(distinct),
        f"{name}_to_text": recall_at_k(feats, distinct_text, captions, distinct, ks),
        f"text_to_{name}": recall_at_k(distinct_text, feats, distinct, captions, ks),
        "chance": {
            f"{name}_to_text": chance_at_k(len(distinct), [1] * len(captions), ks),
            f"text_to_{name}": chance_at_k(len(captions), [per_caption[c] for c in distinct], ks),
        },
    }


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    urls: Sequence[str],
    counts: Sequence[int],
    *,
    ks: Sequence[int] = (1, 5),
    batch_size: int = 256,
    max_samples: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Recall@k image<->text (and audio<->text when the checkpoint has an audio tower) over the given shards."""
    clip, preprocess, tokenizer = load_scorer(checkpoint_dir, device=device)
    audio_tower, audio_cfg = None, None
    if (Path(checkpoint_dir) / AUDIO_WEIGHTS).is_file():
        audio_tower, _ = load_audio_tower(checkpoint_dir, device=device)
        audio_cfg: AudioTowerConfig | None = audio_tower.cfg
    n = sum(counts) if max_samples is None else min(sum(counts), max_samples)
    dataset = ShardStream(
        urls, counts, assignment=assign([(0, n)], 1, 0)[0], consumer_base=0, seed=0, epoch=0, block=1,
        shuffle_shards=False, batch_size=batch_size, decoder=Decoder(tokenizer, preprocess, audio_cfg),
    )
    captions: dict[str, list[str]] = {"image": [], "audio": []}
    feats: dict[str, list[torch.Tensor]] = {"image": [], "audio": [], "image_text": [], "audio_text": []}
    for batch in make_loader(dataset, loader_workers=0, prefetch_batches=1, pin_memory=False):
        if not batch["keys"]:
            continue
        text = F.normalize(clip.encode_text(batch["text"].to(device)), dim=-1)
        for name in ("image", "audio"):
            if batch[name] is None or (name == "audio" and audio_tower is None):
                continue
            x = batch[name].to(device)
            f = clip.encode_image(x) if name == "image" else audio_tower(x)
            feats[name].append(F.normalize(f, dim=-1))
            feats[f"{name}_text"].append(text[batch[f"{name}_idx"].to(device)])
            captions[name].extend(_captions_of(batch, name))
    result: dict[str, Any] = {"checkpoint": str(checkpoint_dir), "shards": list(urls), "match": "same caption text"}
    for name in ("image", "audio"):
        if feats[name]:
            result[f"{name}_text"] = _pair_block(
                torch.cat(feats[name]), torch.cat(feats[f"{name}_text"]), captions[name], ks, name
            )
    return result


def _captions_of(batch: dict[str, Any], name: str) -> list[str]:
    return [batch["captions"][i] for i in batch[f"{name}_idx"].tolist()]
