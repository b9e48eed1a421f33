"""Semantic eval-set decontamination: the eval images embedded once, on the driver, by the model that made the
records' ``embedding`` column, and each record's image embedding matched against them by cosine similarity.

The eval images go through ``clip_score``'s own loader and transform (``stages/clip_score/model.py::load``,
``media.ImagePreprocess``): the same model, the same decode, resize and crop, so a record and the eval image it
copies are embedded alike. That the model is the records' one is the workflow check's job (``origins_needed``:
``decontaminate.semantic.model`` must name the model of the ``clip_score`` stage writing the embeddings); here the
widths are compared, which catches a mix-up the check cannot see (records read from an earlier run's shards).

An eval set is thousands of images: the whole (items x width) matrix travels to the workers in the index, and a
batch's cosines are one matrix product; the best match of a record at or above ``1 - eps`` names its eval item.
"""

from __future__ import annotations

import numpy as np

from mmcurate.schemas.stage_configs import SemanticEvalConfig
from mmcurate.stages.base import InputError


def embed_eval_images(images: list[tuple[str, bytes]], cfg: SemanticEvalConfig) -> tuple[np.ndarray, str]:
    """(unit-norm image embeddings, one row per eval image in order, float32; the model id) under ``cfg.model``."""
    import torch

    from mmcurate.stages.clip_score.media import Failed, ImagePreprocess
    from mmcurate.stages.clip_score.model import load

    scorer = load(cfg.model, torch.device("cpu"))
    preprocess = ImagePreprocess(scorer.preprocess, scorer.device)
    rows = []
    for start in range(0, len(images), cfg.batch_size):
        chunk = images[start:start + cfg.batch_size]
        pixels = []
        for item, data in chunk:
            decoded = preprocess(data)
            if isinstance(decoded, Failed):
                raise InputError(f"decontaminate.semantic: eval image {item} does not decode ({decoded.detail})")
            pixels.append(decoded)
        rows.append(scorer.encode_images(preprocess.batch(pixels)).numpy())
    x = np.concatenate(rows) if rows else np.zeros((0, scorer.dim), np.float32)
    return unit(x), scorer.model_id


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def nearest(embeddings: np.ndarray, eval_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``embeddings`` (unit norm), the position of its most similar eval embedding (the first of equals)
    and that cosine similarity."""
    if len(embeddings) == 0 or len(eval_embeddings) == 0:
        return np.zeros(len(embeddings), np.int64), np.full(len(embeddings), -np.inf)
    sims = embeddings @ eval_embeddings.T
    best = np.argmax(sims, axis=1)
    return best, sims[np.arange(len(best)), best].astype(np.float64)


def check_width(records: int | None, eval_embeddings: np.ndarray, model_id: str) -> None:
    """The records' embedding width against the eval model's: different widths are different models."""
    if records is not None and records != eval_embeddings.shape[1]:
        raise InputError(f"decontaminate.semantic: the records' embeddings are {records} wide and model {model_id} "
                         f"embeds {eval_embeddings.shape[1]}: decontaminate.semantic.model must be the model that "
                         "wrote the embedding column (clip_score's model)")
