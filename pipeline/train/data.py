"""Shard streaming for training: epoch-order positions -> raw samples -> decoded tensors -> batches.

Flow inside one DataLoader worker (one *consumer*):
  assigned intervals of epoch positions (order.assign)
    -> per block: stream positions, read forwards from the shards (shards.StreamReader), held as raw bytes
    -> emitted in epoch order and decoded here (image transform, tokenizer, waveform)
    -> batches of ``batch_size`` decoded samples, each stamped with (consumer, cursor)

``cursor`` is how many of the consumer's positions are behind it once the batch is consumed, corrupt and skipped
ones included; the training loop records the cursor of each batch it actually trains on, so prefetched batches
never count as seen.

A shard holding more samples than its recorded count is read to its end by the consumer that reads its last
counted sample; the extra keys are reported (``shard_extra``, in the ``skipped`` list of the very batch that
consumes that last position, so a checkpoint commits the report and the position together) and not trained: the
epoch order, and with it exact resumption, is fixed by the counts recorded when the run started. Counting reads
local shards whole (``manifest``), so this happens only to shards that changed after that, or to remote shards
counted from a ``_stats.json``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmcurate.pipeline.train.config import AudioTowerConfig
from mmcurate.pipeline.train.order import EpochOrder, Interval
from mmcurate.pipeline.train.shards import StreamReader

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Reason codes of samples consumed without training; the first four match mmcurate.schemas.reasons.Reason values.
IMAGE_CORRUPT, AUDIO_CORRUPT, NOT_UTF8, NO_TEXT = "image_corrupt", "audio_corrupt", "not_utf8", "no_text"
SHARD_TRUNCATED = "shard_truncated"  # the shard held fewer readable samples than its count said
NO_TRAINABLE_MODALITY = "no_trainable_modality"  # e.g. an audio+text sample while the audio tower is off
SHARD_EXTRA = "shard_extra"  # a sample past its shard's recorded count: reported, not trained (see above)


class Report(NamedTuple):
    """A sample reported without occupying an epoch position (so it does not move the cursor)."""

    key: str
    reason: str


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class Decoded:
    key: str
    text: str
    tokens: torch.Tensor
    image: torch.Tensor | None
    audio: torch.Tensor | None


class Decoder:
    """Raw WebDataset sample -> tensors. Modalities the model has no tower for are ignored."""

    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        image_transform: Callable[[Any], torch.Tensor],
        audio: AudioTowerConfig | None,
    ):
        self.tokenizer, self.image_transform, self.audio = tokenizer, image_transform, audio

    def __call__(self, raw: dict[str, Any]) -> Decoded:
        key = str(raw.get("__key__"))
        if raw.get("txt") is None:
            raise SkipSample(NO_TEXT, key)
        try:
            text = raw["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SkipSample(NOT_UTF8, f"{key}: {exc}") from exc
        image = self._image(key, raw)
        audio = self._audio(key, raw) if self.audio is not None else None
        if image is None and audio is None:
            raise SkipSample(NO_TRAINABLE_MODALITY, f"{key}: members {sorted(k for k in raw if k[0] != '_')}")
        return Decoded(key=key, text=text, tokens=self.tokenizer([text])[0], image=image, audio=audio)

    def _image(self, key: str, raw: dict[str, Any]) -> torch.Tensor | None:
        data = next((raw[ext] for ext in IMAGE_EXTS if raw.get(ext) is not None), None)
        if data is None:
            return None
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                return self.image_transform(img.convert("RGB"))
        except Exception as exc:  # PIL raises many types for bad bytes
            raise SkipSample(IMAGE_CORRUPT, f"{key}: {type(exc).__name__}: {exc}") from exc

    def _audio(self, key: str, raw: dict[str, Any]) -> torch.Tensor | None:
        if raw.get("flac") is None:
            return None
        return load_waveform(raw["flac"], self.audio, key)


def load_waveform(data: bytes, cfg: AudioTowerConfig, key: str = "") -> torch.Tensor:
    """FLAC bytes -> mono float32 waveform at ``cfg.sample_rate``, the first ``clip_seconds`` (zero-padded)."""
    import soundfile
    import soxr

    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise SkipSample(AUDIO_CORRUPT, f"{key}: {type(exc).__name__}: {exc}") from exc
    wave = wave.mean(axis=1)
    if rate != cfg.sample_rate:
        wave = soxr.resample(wave, rate, cfg.sample_rate).astype(np.float32)
    n = int(round(cfg.clip_seconds * cfg.sample_rate))
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(wave))] = wave[:n]
    return torch.from_numpy(out)


class Throttled:
    """Logs the 1st-10th occurrence, then every power of ten, so a bad shard cannot flood the log."""

    def __init__(self, logger: logging.Logger, what: str):
        self.logger, self.what, self.count = logger, what, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        n = self.count
        if n <= 10 or str(n).rstrip("0") == "1":
            self.logger.warning("%s #%d: %s", self.what, n, message)


def collate(samples: Sequence[Decoded]) -> dict[str, Any]:
    with_image = [i for i, s in enumerate(samples) if s.image is not None]
    with_audio = [i for i, s in enumerate(samples) if s.audio is not None]
    return {
        "keys": [s.key for s in samples],
        "captions": [s.text for s in samples],
        "text": torch.stack([s.tokens for s in samples]) if samples else torch.zeros(0, 0, dtype=torch.long),
        "image": torch.stack([samples[i].image for i in with_image]) if with_image else None,
        "image_idx": torch.tensor(with_image, dtype=torch.long),
        "audio": torch.stack([samples[i].audio for i in with_audio]) if with_audio else None,
        "audio_idx": torch.tensor(with_audio, dtype=torch.long),
    }


class ShardStream(IterableDataset):
    """One rank's share of one epoch. ``assignment[w]`` are the epoch positions of loader worker ``w``.

    Yields batch dicts (see ``collate``) plus ``skipped`` ([key, reason] pairs consumed without training),
    ``consumer`` (the global consumer id ``consumer_base + w``) and ``cursor``. A batch may hold zero samples when
    it only reports skips."""

    def __init__(
        self,
        urls: Sequence[str],
        counts: Sequence[int],
        *,
        assignment: Sequence[Sequence[Interval]],
        consumer_base: int,
        seed: int,
        epoch: int,
        block: int,
        shuffle_shards: bool,
        batch_size: int,
        decoder: Decoder,
        on_corrupt: str = "skip",
    ):
        self.urls, self.counts = list(urls), list(counts)
        self.assignment = [list(a) for a in assignment]
        self.consumer_base = consumer_base
        self.seed, self.epoch, self.block, self.shuffle_shards = seed, epoch, block, shuffle_shards
        self.batch_size, self.decoder, self.on_corrupt = batch_size, decoder, on_corrupt

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if workers != len(self.assignment):
            raise RuntimeError(f"{len(self.assignment)} loader assignments for {workers} loader workers")
        w = info.id if info is not None else 0
        yield from self._batches(self.assignment[w], self.consumer_base + w)

    def _positions(self, intervals: Sequence[Interval]) -> Iterator[dict[str, Any] | tuple[str, str] | Report]:
        """Samples in epoch order; a (key, reason) pair for a position with no readable sample; ``Report`` items."""
        order = EpochOrder(
            self.counts, seed=self.seed, epoch=self.epoch, block=self.block, shuffle_shards=self.shuffle_shards
        )
        reader = StreamReader(self.urls, order)
        try:
            for a, b in intervals:
                k = a // self.block
                while k * self.block < b:
                    lo, hi = max(a, k * self.block), min(b, (k + 1) * self.block)
                    wanted = order.stream_positions(lo, hi)
                    need = set(wanted.tolist())
                    held = {o: s for o, s in reader.read(int(wanted.min()), int(wanted.max()) + 1) if o in need}
                    for o in wanted.tolist():
                        sample = held.pop(o)
                        shard, ordinal = order.locate(o)
                        if ordinal == self.counts[shard] - 1:
                            for key in reader.extras.pop(shard, []):
                                yield Report(key, SHARD_EXTRA)
                        if sample is None:
                            yield (f"<missing {self.urls[shard]}#{ordinal}>", SHARD_TRUNCATED)
                        else:
                            yield sample
                    k += 1
        finally:
            for error in reader.errors:
                log.error("shard read error: %s", error)
            reader.close()

    def _batches(self, intervals: Sequence[Interval], consumer: int) -> Iterator[dict[str, Any]]:
        warn = Throttled(log, "skipped sample")
        warn_extra = Throttled(log, "sample past its shard's recorded count, not trained")
        pending: list[Decoded] = []
        skipped: list[list[str]] = []
        cursor = 0
        for item in self._positions(intervals):
            if isinstance(item, Report):  # before the tuple test: a NamedTuple is a tuple
                skipped.append([item.key, item.reason])
                warn_extra(item.key)
                continue
            cursor += 1
            if isinstance(item, tuple):
                key, reason = item
                skipped.append([key, reason])
                warn(f"{reason}: {key}")
                if self.on_corrupt == "raise":
                    raise SkipSample(reason, key)
                continue
            try:
                pending.append(self.decoder(item))
            except SkipSample as exc:
                if self.on_corrupt == "raise":
                    raise
                skipped.append([str(item.get("__key__")), exc.reason])
                warn(str(exc))
                continue
            if len(pending) == self.batch_size:
                yield {**collate(pending), "skipped": skipped, "consumer": consumer, "cursor": cursor}
                pending, skipped = [], []
        if pending or skipped:
            yield {**collate(pending), "skipped": skipped, "consumer": consumer, "cursor": cursor}
        if warn.count:
            log.warning("consumer %d skipped %d samples in epoch %d", consumer, warn.count, self.epoch)
        if warn_extra.count:
            log.warning(
                "consumer %d found %d samples past their shards' recorded counts in epoch %d (reason %s); a new "
                "run directory counts them", consumer, warn_extra.count, self.epoch, SHARD_EXTRA,
            )


def make_loader(dataset: ShardStream, *, loader_workers: int, prefetch_batches: int, pin_memory: bool) -> DataLoader:
    extra: dict[str, Any] = {"prefetch_factor": prefetch_batches} if loader_workers > 0 else {}
    # batch_size=None: the dataset batches itself, so each batch comes from one consumer with one cursor
    return DataLoader(dataset, batch_size=None, num_workers=loader_workers, pin_memory=pin_memory, **extra)
