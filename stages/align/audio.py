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

# Caps on what a header may ask ``decode_audio`` to allocate (a 93 KB FLAC of silence can declare gigabytes).
MAX_SAMPLE_RATE = 384_000  # the highest rate in real use (DXD/hi-res masters); above it the header is nonsense
MAX_CHANNELS = 8  # 7.1 surround, and FLAC's own maximum; web speech audio never needs more
DECODE_SAMPLES_PER_SECOND = 48_000 * 2  # per second of max_seconds: 48 kHz stereo's worth, whatever the layout
_DECODE_BLOCK_FRAMES = 1 << 16  # frames decoded per block: at most 2 MiB of float32 at MAX_CHANNELS
_UNLIMITED_FRAMES = 1 << 62


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

    Memory is bounded by the header, not only by duration, because a tiny file (silence compresses to almost
    nothing) can declare a huge decode:

    * a sample rate above ``MAX_SAMPLE_RATE`` or more than ``MAX_CHANNELS`` channels is ``AUDIO_CORRUPT``;
    * with ``max_seconds``, more than ``max_seconds * DECODE_SAMPLES_PER_SECOND`` samples (frames × channels, i.e.
      ``max_seconds`` of 48 kHz stereo whatever the rate and channel count) is ``AUDIO_TOO_LONG``.

    Decoding then runs in blocks of ``_DECODE_BLOCK_FRAMES`` frames, each downmixed to mono at once, and stops (and
    rejects) as soon as more frames come back than the caps allow, so a header that understates its length cannot
    make it decode more. Peak memory is the mono result plus one block.
    """
    if not data:
        raise Rejected(Reason.AUDIO_CORRUPT, "empty body")
    wav_problem = _wav_truncation(data)
    if wav_problem:
        raise Rejected(Reason.AUDIO_CORRUPT, wav_problem)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate, channels, declared_frames = sound.samplerate, sound.channels, sound.frames
            frame_limit = _frame_limit(rate, channels, declared_frames, max_seconds)
            samples, read_frames = _read_mono(sound, channels, declared_frames, frame_limit)
    except (soundfile.SoundFileError, RuntimeError, ValueError, MemoryError) as err:
        raise Rejected(Reason.AUDIO_CORRUPT, f"decode: {err}") from None

    if read_frames > frame_limit:  # the header understated the length: more came back than the caps allow
        raise _too_many_samples(read_frames, rate, channels, max_seconds, "decoded at least")
    if read_frames == 0:
        raise Rejected(Reason.AUDIO_CORRUPT, "no samples")
    # FLAC/OGG raise on a cut stream, MP3 does not: it decodes what is there and the header count exposes it.
    if read_frames < declared_frames:
        raise Rejected(Reason.AUDIO_CORRUPT, f"truncated: header declares {declared_frames} frames, got {read_frames}")
    if not np.isfinite(samples).all():  # a non-finite sample in any channel makes its frame's mean non-finite
        raise Rejected(Reason.AUDIO_CORRUPT, "non-finite samples")
    if max_seconds is not None and read_frames / rate > max_seconds:
        raise Rejected(Reason.AUDIO_TOO_LONG, f"{read_frames / rate:.1f}s > {max_seconds:g}s")
    return samples, rate


def _frame_limit(rate: int, channels: int, declared_frames: int, max_seconds: float | None) -> int:
    """Most frames ``decode_audio`` may decode for this header; rejects a header whose declared size is over it."""
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise Rejected(Reason.AUDIO_CORRUPT, f"sample rate {rate} Hz (accepted: 1..{MAX_SAMPLE_RATE})")
    if not 0 < channels <= MAX_CHANNELS:
        raise Rejected(Reason.AUDIO_CORRUPT, f"{channels} channels (accepted: 1..{MAX_CHANNELS})")
    if max_seconds is None:
        return _UNLIMITED_FRAMES
    if declared_frames / rate > max_seconds:
        raise Rejected(Reason.AUDIO_TOO_LONG, f"header declares {declared_frames / rate:.1f}s > {max_seconds:g}s")
    limit = int(max_seconds * DECODE_SAMPLES_PER_SECOND) // channels
    if declared_frames > limit:
        raise _too_many_samples(declared_frames, rate, channels, max_seconds, "header declares")
    return limit


def _too_many_samples(frames: int, rate: int, channels: int, max_seconds: float | None, what: str) -> Rejected:
    cap = int((max_seconds or 0) * DECODE_SAMPLES_PER_SECOND)
    return Rejected(
        Reason.AUDIO_TOO_LONG,
        f"{what} {frames} frames x {channels} channels at {rate} Hz = {frames * channels} samples, over the "
        f"decode cap of {cap} ({max_seconds:g}s of 48 kHz stereo)",
    )


def _read_mono(
    sound: soundfile.SoundFile, channels: int, declared_frames: int, frame_limit: int
) -> tuple[np.ndarray, int]:
    """Read at most ``frame_limit + 1`` frames block by block, downmixing each block by the mean of its channels.

    Returns (mono samples, frames read); more than ``frame_limit`` frames read means the caller must reject. (soundfile
    and libsndfile stop at the header's count, which is already within the caps; counting what actually came back
    keeps the bound even if a decoder ever returns more than its header declared.)
    """
    wanted = frame_limit + 1  # one more than allowed, so a decode longer than allowed shows itself
    mono = np.empty(min(declared_frames, wanted), dtype=np.float32)  # the header's count, already within the caps
    extra: list[np.ndarray] = []  # anything past the header's count
    block = np.empty((min(_DECODE_BLOCK_FRAMES, wanted), channels), dtype=np.float32)
    done = 0
    while done < wanted:
        got = len(sound.read(dtype="float32", always_2d=True, out=block[: min(len(block), wanted - done)]))
        if got == 0:
            break
        chunk = block[:got, 0] if channels == 1 else block[:got].mean(axis=1, dtype=np.float32)
        fits = min(max(len(mono) - done, 0), got)
        mono[done : done + fits] = chunk[:fits]
        if fits < got:
            extra.append(chunk[fits:].copy())
        done += got
    if extra:
        mono = np.concatenate([mono, *extra])
    return mono[:done], done


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
