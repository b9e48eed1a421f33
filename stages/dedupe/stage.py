"""The ``dedupe`` global stage: drop copies and eval-set matches over the whole run, keeping one survivor per
group and saying, on every dropped sample, which method matched it, to what, and how closely.

``summarize`` (on the driver, over Ray Data; the records never reach it):
  1. signatures of every record in the workers (``signatures.py``): survivor rank, digests, pHash, thumbnails;
  2. ``decontaminate``: records matching the eval set are dropped first (``decontaminate.py``; the semantic
     match, ``eval_semantic.py``, embeds the eval images on the driver);
  3. ``exact`` (pixels, then audio samples, then text), ``perceptual``, ``semantic``, ``text``, in this order,
     each over the records the ones before kept (``groups.py``, ``perceptual.py``, ``semantic.py``,
     ``text.py``);
  4. the drops, one row each, into ``artifacts/drops.parquet`` (``drops.py``).
``decide`` (in the workers) rejects the records the drop table names, with its reason and detail.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.stage_configs import DedupeConfig
from mmcurate.stages.base import Decisions, GlobalStage, InputError, StageContext
from mmcurate.stages.dedupe.decontaminate import (
    EvalIndex,
    check_semantic_fraction,
    decontaminate,
    load_eval_set,
    semantic_count,
)
from mmcurate.stages.dedupe.drops import DROPS_FILE, read_drops, write_drops
from mmcurate.stages.dedupe.eval_semantic import check_width
from mmcurate.stages.dedupe.groups import exact, remaining
from mmcurate.stages.dedupe.perceptual import near_duplicates
from mmcurate.stages.dedupe.semantic import semantic_duplicates
from mmcurate.stages.dedupe.shuffle import arrow_schema, sort_shuffle
from mmcurate.stages.dedupe.signatures import signatures, thumbnail_crops
from mmcurate.stages.dedupe.text import text_duplicates

log = logging.getLogger("mmcurate.stage.dedupe")

_EXACT = (  # (config switch, signature column, method, what the detail says)
    ("image", "pixels", "exact_pixels", "exact pixels"),
    ("audio", "samples", "exact_samples", "exact audio samples"),
    ("text", "text_digest", "exact_text", "exact normalised text"),
)


class DedupeStage(GlobalStage[DedupeConfig]):
    _drops: dict[str, tuple[str, str]] | None = None
    _drops_path: str | None = None

    def summarize(self, dataset: Any, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        columns = arrow_schema(dataset).names if dataset.schema() is not None else []
        if cfg.semantic.enabled and "embedding" not in columns:
            raise InputError(f"stage {self.name}: semantic dedupe reads the embedding column, which the records do "
                             "not have: run clip_score with embedding: true before it, or set semantic.enabled: false")
        if self._eval_semantic() and "embedding" not in columns:
            raise InputError(f"stage {self.name}: decontaminate.semantic reads the embedding column, which the "
                             "records do not have: run clip_score with embedding: true before it, or remove "
                             "decontaminate.semantic")
        path = ctx.progress_dir / "artifacts" / DROPS_FILE
        index = self._eval_index()
        if index is not None and index.embeddings is not None:
            width = getattr(arrow_schema(dataset).field("embedding").type, "list_size", None)
            check_width(width, index.embeddings, index.model_id)
        with sort_shuffle(dataset):
            clock = _Clock(self.name)
            sigs = dataset.map_batches(signatures, batch_format="pyarrow", fn_kwargs=self._signature_args()) \
                .materialize()
            records = clock.lap("signatures", sigs.count())
            if records == 0:  # an upstream that kept nothing: Ray Data's shuffles want a schema to group by
                return {"records": 0, "dropped": write_drops([], path), "drops": str(path)}
            drops, alive = [], sigs
            if index is not None:
                drops.append(decontaminate(sigs, index))
                alive = remaining(alive, drops[-1], cfg.partitions)
                clock.lap("decontaminate", drops[-1].count())
                if index.embeddings is not None:  # over the whole run, not a batch
                    check_semantic_fraction(semantic_count(drops[-1]), records, cfg.decontaminate.semantic)
            if cfg.exact.enabled:
                for switch, column, method, measures in _EXACT:
                    if getattr(cfg.exact, switch):
                        dropped, alive = exact(alive, column, Reason.DUPLICATE.value, method, measures, cfg.partitions)
                        drops.append(dropped)
                        clock.lap(method, dropped.count())
            if cfg.perceptual.enabled:
                dropped, alive = near_duplicates(alive, cfg.perceptual.radius, cfg.perceptual.max_thumbnail_rms,
                                                 cfg.partitions)
                drops.append(dropped)
                clock.lap("phash", dropped.count())
            if cfg.semantic.enabled:
                dropped, alive = semantic_duplicates(alive, cfg.semantic, cfg.partitions)
                drops.append(dropped)
                clock.lap("semantic", dropped.count())
            if cfg.text.enabled:
                dropped, alive = text_duplicates(alive, cfg.text, cfg.partitions)
                drops.append(dropped)
                clock.lap("minhash", dropped.count())
            counts = write_drops(drops, path)
        summary = {"records": records, "dropped": counts, "drops": str(path)}
        if index is not None:
            summary["eval_items"] = index.size
            if index.model_id is not None:
                summary["eval_model"] = index.model_id
        return summary

    def _eval_semantic(self) -> bool:
        return self.config.decontaminate is not None and self.config.decontaminate.semantic is not None

    def _eval_index(self) -> EvalIndex | None:
        cfg = self.config
        if cfg.decontaminate is None:
            return None
        index = load_eval_set(cfg.decontaminate, cfg.text, cfg.perceptual.max_thumbnail_rms, cfg.perceptual.max_crop,
                              self._crops())
        if index.size == 0:
            raise InputError(f"stage {self.name}: the eval set ({', '.join(cfg.decontaminate.files())}) has no item")
        return index

    def _crops(self) -> list[float] | None:
        rms = self.config.perceptual.max_thumbnail_rms
        return thumbnail_crops(self.config.perceptual.max_crop) if rms is not None else None

    def _signature_args(self) -> dict[str, Any]:
        cfg, eval_set = self.config, self.config.decontaminate
        return {
            "score": cfg.survivor.score, "resolution": cfg.survivor.resolution,
            "people_first": cfg.survivor.people_first,
            "pixels": (cfg.exact.enabled and cfg.exact.image) or (eval_set is not None and eval_set.exact),
            "samples": cfg.exact.enabled and cfg.exact.audio,
            "text": (cfg.exact.enabled and cfg.exact.text) or cfg.text.enabled
                    or (eval_set is not None and eval_set.texts is not None),
            "phash": cfg.perceptual.enabled or (eval_set is not None and eval_set.perceptual),
            "crops": self._crops(),
            "embedding": cfg.semantic.enabled or self._eval_semantic(),
        }

    def decide(self, batch: pa.Table, summary: dict[str, Any]) -> pa.Table:
        if self._drops is None or self._drops_path != summary["drops"]:
            self._drops, self._drops_path = read_drops(summary["drops"]), summary["drops"]
        found = [self._drops.get(key) for key in batch["key"].to_pylist()]
        decisions = Decisions(batch)
        for reason in sorted({f[0] for f in found if f is not None}):
            decisions.reject([f is not None and f[0] == reason for f in found], reason,
                             [f[1] if f is not None and f[0] == reason else None for f in found])
        return decisions.outcomes()


class _Clock:
    """Logs each step's result count and seconds: a slow method shows in the run log."""

    def __init__(self, stage: str):
        self.stage, self.last = stage, time.perf_counter()

    def lap(self, step: str, rows: int) -> int:
        now = time.perf_counter()
        log.info("stage %s: %s: %d rows in %.1f s", self.stage, step, rows, now - self.last)
        self.last = now
        return rows
