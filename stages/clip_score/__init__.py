"""The ``clip_score`` stage: each sample's caption against its image (and its audio, when the model has an audio
tower) under a CLIP model, as cosine similarities in ``scores``.

Per record of a batch:
  * image and text: ``clip_score.<model id>.image_text``; audio and text, with an audio tower:
    ``clip_score.<model id>.audio_text`` (``model.py`` says how the id is made). Both when a record has both.
  * below ``min_score[modality]``: ``clip_score_low``, the detail naming score, threshold and model
    (``image_text 0.1832 < 0.25 (model mmcurate-demo-tiny-3f2a9c01)``).
  * an image that does not decode: ``image_corrupt`` (a decompression bomb: ``image_too_large``); audio that does
    not decode, with an audio tower: ``audio_corrupt``. Align decoded them already, so this is rare; it is a reject,
    never a failed batch.
  * a record a person labelled "match" (``human_match``, the labels stage) is scored but never ``clip_score_low``.
  * no text, or no medium the model can score (audio with no audio tower in the model): kept, unscored.
  * ``embedding``: with ``config.embedding``, the unit-norm image embedding, else the audio embedding (computed
    for records without text too: semantic dedupe needs no caption); null for records with neither.

The model loads once per worker (``setup``). In a batch, decoding starts first on ``config.threads`` threads while
the text tower runs on the calling thread; images and audio are then encoded in chunks of ``config.batch_size``
under ``torch.inference_mode`` (and autocast for bf16/fp16), each chunk as soon as its media are decoded. On a CPU
whose every core torch's intra-op threads already use, the text tower waits for the decoding instead: decode
threads taking cores from the tower's threads leave the others waiting on them (ViT-B-32, fp32, batch 64, on 2
cores: 192 records through ``process_table`` at 0.91 of ``encode_image``'s rate on the same images overlapped, 0.96
in turn, best of 3 each).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

import pyarrow as pa
import torch

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.record import EXTENSION_COLUMNS
from mmcurate.schemas.stage_configs import ClipScoreConfig
from mmcurate.stages.base import BatchStage, Decisions
from mmcurate.stages.clip_score.media import Failed, ImagePreprocess, decode_audio
from mmcurate.stages.clip_score.model import Scorer, device_for, load


class ClipScoreStage(BatchStage[ClipScoreConfig]):
    scorer: Scorer | None = None

    def setup(self) -> None:
        if self.scorer is not None:
            return
        self.scorer = load(self.config.model, device_for(self.config))
        self.images = ImagePreprocess(self.scorer.preprocess, self.scorer.device)
        self.pool = ThreadPoolExecutor(max_workers=self.config.threads, thread_name_prefix="mmcurate-clip-decode")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.overlap = self.scorer.device.type != "cpu" or torch.get_num_threads() < cores

    def score_name(self, modality: str) -> str:
        """The key of ``scores`` this stage writes for ``modality`` ("image" or "audio")."""
        return f"clip_score.{self.scorer.model_id}.{modality}_text"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.scorer is None:
            raise RuntimeError("ClipScoreStage.process_batch before setup(): setup loads the model")
        scorer, n = self.scorer, batch.num_rows
        texts = batch["text"].to_pylist()
        has_text = [bool(t and t.strip()) for t in texts]
        images, audios = batch["image"].to_pylist(), batch["audio"].to_pylist()
        can_audio, embed = scorer.audio is not None, self.config.embedding
        image_rows = [i for i in range(n) if images[i] is not None and (has_text[i] or embed)]
        audio_rows = [i for i in range(n) if can_audio and audios[i] is not None
                      and (has_text[i] or (embed and images[i] is None))]
        text_rows = sorted({i for i in image_rows + audio_rows if has_text[i]})

        # decoding runs in the pool while this thread runs the text tower, unless the tower's threads fill the CPU
        image_jobs = [self.pool.submit(self.images, images[i]) for i in image_rows]
        audio_jobs = [self.pool.submit(decode_audio, audios[i], scorer.audio.cfg) for i in audio_rows]
        if not self.overlap:
            wait(image_jobs + audio_jobs)
        size = self.config.batch_size
        text_feats = {}
        for start in range(0, len(text_rows), size):
            chunk = text_rows[start:start + size]
            text_feats.update(zip(chunk, scorer.encode_text([texts[i] for i in chunk])))
        image_feats = self._encoded(image_rows, image_jobs, self.images.batch, scorer.encode_images)
        audio_feats = self._encoded(audio_rows, audio_jobs, torch.stack, scorer.encode_audio)

        decisions = Decisions(batch)
        human = batch["human_match"].to_pylist() if "human_match" in batch.column_names else [None] * n
        for feats in (image_feats, audio_feats):
            failed = [feats.get(i) if isinstance(feats.get(i), Failed) else None for i in range(n)]
            for reason in {f.reason for f in failed if f is not None}:
                decisions.reject([f is not None and f.reason == reason for f in failed], reason,
                                 [f.detail if f is not None else None for f in failed])
        for modality, feats, scored in (("image", image_feats, True), ("audio", audio_feats, can_audio)):
            if not scored:
                continue
            values = [float(feats[i] @ text_feats[i]) if isinstance(feats.get(i), torch.Tensor) and i in text_feats
                      else None for i in range(n)]
            decisions.add_scores(self.score_name(modality), values)
            threshold = self.config.min_score.get(modality)
            if threshold is not None:
                # a person said "match" (the labels stage): scored, shown below its threshold by explain, kept
                low = [v is not None and v < threshold and not matched for v, matched in zip(values, human)]
                details = [f"{modality}_text {v:.4f} < {threshold:g} (model {scorer.model_id})" if is_low else None
                           for v, is_low in zip(values, low)]
                decisions.reject(low, Reason.CLIP_SCORE_LOW, details)
        if embed:
            decisions.set("embedding", self._embeddings(n, image_feats, audio_feats, decisions.rejected))
        return decisions.outcomes()

    def _encoded(self, rows: list[int], jobs: list[Future], stack: Callable, encode: Callable) -> dict[int, Any]:
        """Row -> unit-norm embedding, or ``Failed``: chunks of ``batch_size`` encoded as their decodes finish."""
        out: dict[int, Any] = {}
        size = self.config.batch_size
        for start in range(0, len(rows), size):
            ready = []
            for row, job in zip(rows[start:start + size], jobs[start:start + size]):
                item = job.result()
                if isinstance(item, Failed):
                    out[row] = item
                else:
                    ready.append((row, item))
            if ready:
                out.update(zip((row for row, _ in ready), encode(stack([item for _, item in ready]))))
        return out

    def _embeddings(self, n: int, image_feats: dict, audio_feats: dict, rejected: pa.Array) -> pa.Array:
        """The fixed-size embedding column: image embedding, else audio; null for neither and for rejects."""
        dim = self.scorer.dim
        flat = torch.zeros(n, dim, dtype=torch.float32)
        valid = [False] * n
        gone = rejected.to_pylist()
        for i in range(n):
            feat = next((f[i] for f in (image_feats, audio_feats) if isinstance(f.get(i), torch.Tensor)), None)
            if feat is not None and not gone[i]:
                flat[i], valid[i] = feat, True
        values = pa.array(flat.numpy().reshape(-1), pa.float32())
        column = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array([not v for v in valid]))
        return column.cast(EXTENSION_COLUMNS["embedding"](dim))


__all__ = ["ClipScoreStage"]
