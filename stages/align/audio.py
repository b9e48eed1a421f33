"""Audio decoding, resampling, FLAC encoding and cue-aligned clip cutting for the align stage.

``soundfile`` (libsndfile) decodes WAV/FLAC/OGG/MP3 and encodes FLAC; ``soxr`` resamples. Everything here works
on mono float32 in [-1, 1]; multi-channel audio is downmixed by the mean of its channels.

Clip policy (``cut_clips``), so the caller can write one row per cue: every cue ends up either as an
``AudioClip`` or as a ``CueRejection``, never both and never neither (``len(clips) + len(rejections) ==
len(cues)``).

* A cue is cut at its own times, sample-accurately at the output rate (``round(t * rate)``), widened by ``pad_s``
  on both sides and clamped to the audio.
* A cue that starts at or after the end of the audio, or ends more than ``max_overrun_s`` after it, is
  ``CUE_PAST_END``: clamping it would pair its whole text with part of its speech. A smaller overrun (container
  durations and subtitle rounding disagree by a few frames) is clamped.
* Length limits apply to the cue's own span after clamping, not to the padding: shorter than ``min_clip_s`` is
  ``CLIP_TOO_SHORT`` (this includes zero-length cues), longer than ``max_clip_s`` is ``AUDIO_TOO_LONG``. Long cues
  are rejected, not split: splitting would give every piece the whole cue's text, which is a misaligned pair.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import numpy as np
import soundfile
import soxr

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.align.subtitles import Cue

# libsndfile writes the stream length after the audio; WAV writers that stream leave these placeholders.
_WAV_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)
_INT16_SCALE = 32768


@dataclass(frozen=True)
class NormalisedAudio:
    """A whole recording as mono 16-bit FLAC at ``rate``."""

    flac: bytes
    rate: int
    seconds: float


@dataclass(frozen=True)
class AudioClip:
    """One cue's audio. ``index`` is the cue's position in the list given to ``cut_clips``; times are the actual
    cut (after padding and clamping) in seconds from the start of the recording."""

    index: int
    start_s: float
    end_s: float
    text: str
    flac: bytes
    rate: int
    seconds: float


@dataclass(frozen=True)
class CueRejection:
    """A cue that produced no clip, and why (the caller writes it as a reject row)."""

    index: int
    cue: Cue
    rejected: Rejected


@dataclass(frozen=True)
class ClipCuts:
    """Result of ``cut_clips``: kept clips and rejected cues, each in cue order."""

    clips: list[AudioClip] = field(default_factory=list)
    rejections: list[CueRejection] = field(default_factory=list)


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format to (mono float32 samples, sample rate).

    Empty, unreadable, truncated or non-finite audio is ``AUDIO_CORRUPT``; with ``max_seconds`` a recording whose
    header already declares more is ``AUDIO_TOO_LONG`` before its samples are decoded.
    """
    if not data:
        raise Rejected(Reason.AUDIO_CORRUPT, "empty body")
    wav_problem = _wav_truncation(data)
    if wav_problem:
        raise Rejected(Reason.AUDIO_CORRUPT, wav_problem)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, declared_frames = sound.samplerate, sound.frames
            if rate <= 0:
                raise Rejected(Reason.AUDIO_CORRUPT, f"sample rate {rate}")
            if max_seconds is not None and declared_frames / rate > max_seconds:
                raise Rejected(
                    Reason.AUDIO_TOO_LONG, f"header declares {declared_frames / rate:.1f}s > {max_seconds:g}s"
                )
            frames = sound.read(dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, ValueError, MemoryError) as err:
        raise Rejected(Reason.AUDIO_CORRUPT, f"decode: {err}") from None

    if len(frames) == 0:
        raise Rejected(Reason.AUDIO_CORRUPT, "no samples")
    # FLAC/OGG raise on a cut stream, MP3 does not: it decodes what is there and the header count exposes it.
    if len(frames) < declared_frames:
        raise Rejected(Reason.AUDIO_CORRUPT, f"truncated: header declares {declared_frames} frames, got {len(frames)}")
    if not np.isfinite(frames).all():
        raise Rejected(Reason.AUDIO_CORRUPT, "non-finite samples")
    samples = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if max_seconds is not None and len(samples) / rate > max_seconds:
        raise Rejected(Reason.AUDIO_TOO_LONG, f"{len(samples) / rate:.1f}s > {max_seconds:g}s")
    return np.ascontiguousarray(samples), rate


def _wav_truncation(data: bytes) -> str | None:
    """libsndfile shortens a cut WAV to the bytes present without an error, so check the data chunk size here."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, chunk_size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk_id == b"data":
            present = len(data) - (offset + 8)
            if chunk_size not in _WAV_UNKNOWN_DATA_SIZES and present < chunk_size:
                return f"truncated WAV: data chunk declares {chunk_size} bytes, {present} present"
            return None
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return None  # no data chunk: libsndfile reports that itself


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 at ``to_rate`` (soxr high quality); returned unchanged when the rates match."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit FLAC. We quantise ourselves (clip, scale, round) so the bytes depend only on the samples."""
    if samples.ndim != 1 or len(samples) == 0:
        raise ValueError(f"encode_flac wants non-empty mono samples, got shape {samples.shape}")
    # Scale by 32768 (libsndfile reads int16 back as value / 32768, so a round trip is exact) and saturate.
    pcm = np.clip(np.round(samples.astype(np.float64) * _INT16_SCALE), -_INT16_SCALE, _INT16_SCALE - 1).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def normalise_audio(data: bytes, *, rate: int, max_seconds: float) -> NormalisedAudio:
    """Decode, downmix, resample to ``rate`` and re-encode as mono FLAC; longer than ``max_seconds`` is rejected."""
    samples, source_rate = decode_audio(data, max_seconds=max_seconds)
    samples = resample(samples, source_rate, rate)
    return NormalisedAudio(flac=encode_flac(samples, rate), rate=rate, seconds=len(samples) / rate)


def cut_clips(
    data: bytes,
    cues: list[Cue],
    *,
    rate: int,
    min_clip_s: float,
    max_clip_s: float,
    pad_s: float = 0.0,
    max_overrun_s: float = 0.5,
    max_seconds: float | None = None,
) -> ClipCuts:
    """Cut one FLAC clip per cue from a recording; see the module docstring for the policy.

    A recording that cannot be decoded (or exceeds ``max_seconds``) raises ``Rejected`` for the whole sample.
    """
    samples, source_rate = decode_audio(data, max_seconds=max_seconds)
    samples = resample(samples, source_rate, rate)
    total_samples = len(samples)
    audio_s = total_samples / rate
    result = ClipCuts()

    for index, cue in enumerate(cues):
        start_s, end_s = max(cue.start_s, 0.0), cue.end_s
        problem: Rejected | None = None
        if start_s >= audio_s:
            problem = Rejected(Reason.CUE_PAST_END, f"cue starts at {start_s:.3f}s, audio is {audio_s:.3f}s")
        elif end_s > audio_s + max_overrun_s:
            problem = Rejected(Reason.CUE_PAST_END, f"cue ends at {end_s:.3f}s, {end_s - audio_s:.3f}s after the audio")
        else:
            end_s = min(end_s, audio_s)
            span_s = end_s - start_s
            if span_s < min_clip_s:
                problem = Rejected(Reason.CLIP_TOO_SHORT, f"{span_s:.3f}s < {min_clip_s:g}s")
            elif span_s > max_clip_s:
                problem = Rejected(Reason.AUDIO_TOO_LONG, f"cue is {span_s:.3f}s > {max_clip_s:g}s")
        first = max(round((start_s - pad_s) * rate), 0)
        stop = min(round((end_s + pad_s) * rate), total_samples)
        if problem is None and stop <= first:  # only reachable with min_clip_s <= 0
            problem = Rejected(Reason.CLIP_TOO_SHORT, "cue covers no samples")
        if problem is not None:
            result.rejections.append(CueRejection(index=index, cue=cue, rejected=problem))
            continue
        clip_samples = samples[first:stop]
        result.clips.append(
            AudioClip(
                index=index,
                start_s=first / rate,
                end_s=stop / rate,
                text=cue.text,
                flac=encode_flac(clip_samples, rate),
                rate=rate,
                seconds=len(clip_samples) / rate,
            )
        )
    return result
