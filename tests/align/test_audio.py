"""Audio decoding, resampling, FLAC encoding and cue clip cutting, on synthesised tones."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.align.audio import ClipCuts, cut_clips, decode_audio, encode_flac, normalise_audio
from mmcurate.stages.align.subtitles import Cue


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def read_flac(data: bytes) -> tuple[np.ndarray, int, soundfile._SoundFileInfo]:
    info = soundfile.info(io.BytesIO(data))
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate, info


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "FLOAT")])
def test_decode_formats_to_mono_float32(fmt, subtype):
    samples, rate = decode_audio(encode(tone(1.0, 16000), 16000, fmt, subtype))
    assert rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == 16000
    assert np.abs(samples).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="this libsndfile has no MP3")
def test_decode_mp3():
    samples, rate = decode_audio(encode(tone(1.0, 16000), 16000, "MP3"))
    assert rate == 16000 and len(samples) == 16000


def test_stereo_downmixed_by_mean():
    left = tone(0.5, 8000, amplitude=0.6)
    right = np.zeros_like(left)
    samples, _ = decode_audio(encode(np.stack([left, right], axis=1), 8000, "WAV", "FLOAT"))
    np.testing.assert_allclose(samples, left / 2, atol=1e-6)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFF",
        np.random.default_rng(0).bytes(4000),
        encode(tone(1.0, 16000), 16000, "FLAC")[:40],  # header only
    ],
    ids=["empty", "riff-stub", "random", "flac-header-only"],
)
def test_corrupt_audio_rejected(data):
    with pytest.raises(Rejected) as excinfo:
        decode_audio(data)
    assert excinfo.value.reason == Reason.AUDIO_CORRUPT


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_truncated_audio_rejected(fmt):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"no {fmt} in this libsndfile")
    data = encode(np.stack([tone(2.0, 16000)] * 2, axis=1), 16000, fmt)
    with pytest.raises(Rejected) as excinfo:
        decode_audio(data[: len(data) // 2])
    assert excinfo.value.reason == Reason.AUDIO_CORRUPT


def test_non_finite_samples_rejected():
    samples = tone(0.1, 8000)
    samples[10] = np.nan
    with pytest.raises(Rejected) as excinfo:
        decode_audio(encode(samples, 8000, "WAV", "FLOAT"))
    assert excinfo.value.reason == Reason.AUDIO_CORRUPT


def test_encode_flac_is_mono_16bit_deterministic_and_clipped():
    samples = tone(0.25, 16000, amplitude=1.5)  # over full scale: must clip, not wrap
    flac = encode_flac(samples, 16000)
    assert flac == encode_flac(samples.copy(), 16000)
    decoded, rate, info = read_flac(flac)
    assert (info.format, info.subtype, info.channels, rate) == ("FLAC", "PCM_16", 1, 16000)
    assert len(decoded) == len(samples)
    assert decoded.max() == pytest.approx(1.0, abs=1e-4) and decoded.min() == pytest.approx(-1.0, abs=1e-4)
    # a sample inside full scale round-trips to 16-bit precision
    inside = np.abs(samples) < 0.9
    np.testing.assert_allclose(decoded[inside], samples[inside], atol=0.5 / 32768 + 1e-7)


def test_normalise_resamples_rate_and_length():
    source = encode(np.stack([tone(1.5, 44100, freq=220)] * 2, axis=1), 44100, "FLAC")
    result = normalise_audio(source, rate=16000, max_seconds=10)
    decoded, rate, info = read_flac(result.flac)
    assert (result.rate, rate, info.channels) == (16000, 16000, 1)
    assert len(decoded) == 24000 and result.seconds == pytest.approx(1.5)
    # the tone survives resampling: dominant frequency still 220 Hz
    spectrum = np.abs(np.fft.rfft(decoded))
    assert np.fft.rfftfreq(len(decoded), 1 / 16000)[spectrum.argmax()] == pytest.approx(220, abs=1)
    assert normalise_audio(source, rate=16000, max_seconds=10).flac == result.flac


def test_normalise_rejects_too_long_from_header():
    with pytest.raises(Rejected) as excinfo:
        normalise_audio(encode(tone(3.0, 8000), 8000), rate=8000, max_seconds=2.0)
    assert excinfo.value.reason == Reason.AUDIO_TOO_LONG


def step_signal(rate: int, seconds: int) -> np.ndarray:
    """Each whole second holds a constant level 0.1 * (second + 1): a clip's values say where it was cut."""
    return np.repeat(np.arange(1, seconds + 1, dtype=np.float32) * 0.1, rate)


def test_clips_are_sample_accurate_and_from_the_right_place():
    rate = 8000
    audio = encode(step_signal(rate, 5), rate, "WAV", "FLOAT")
    cues = [Cue(0.5, 1.25, "first"), Cue(2.0, 2.5, "second"), Cue(3.1, 4.9, "third")]
    cuts = cut_clips(audio, cues, rate=rate, min_clip_s=0.2, max_clip_s=10)
    assert cuts.rejections == []
    assert [(c.index, c.text) for c in cuts.clips] == [(0, "first"), (1, "second"), (2, "third")]
    first, second, third = cuts.clips
    assert (first.start_s, first.end_s, first.seconds, first.rate) == (0.5, 1.25, 0.75, rate)
    decoded, _, _ = read_flac(first.flac)
    assert len(decoded) == 6000  # 0.75 s * 8000, exactly
    assert decoded[:4000] == pytest.approx(0.1, abs=1e-4) and decoded[4000:] == pytest.approx(0.2, abs=1e-4)
    decoded, _, _ = read_flac(second.flac)
    assert len(decoded) == 4000 and decoded == pytest.approx(0.3, abs=1e-4)
    assert len(read_flac(third.flac)[0]) == round(1.8 * rate)


def test_clips_resampled_to_the_output_rate_with_padding_clamped():
    audio = encode(tone(2.0, 22050), 22050, "FLAC")
    cuts = cut_clips(
        audio, [Cue(0.1, 1.0, "padded"), Cue(1.5, 1.95, "end")], rate=16000, min_clip_s=0.2, max_clip_s=5, pad_s=0.25
    )
    padded, end = cuts.clips
    assert (padded.start_s, padded.end_s) == (0.0, 1.25)  # start clamped at 0, end padded
    assert len(read_flac(padded.flac)[0]) == 20000
    assert (end.start_s, end.end_s) == (1.25, 2.0)  # end padding clamped at the audio end
    assert read_flac(end.flac)[1] == 16000


def test_every_cue_is_accounted_for_with_a_reason():
    rate = 8000
    audio = encode(tone(3.0, rate), rate)  # 3.0 s of audio
    cues = [
        Cue(0.0, 1.0, "kept"),
        Cue(1.0, 1.05, "too short"),
        Cue(1.5, 1.5, "zero length"),
        Cue(0.0, 2.9, "too long"),
        Cue(2.5, 3.3, "overruns a little: clamped"),
        Cue(2.0, 4.0, "overruns a lot"),
        Cue(3.0, 4.0, "starts at the end"),
        Cue(7.0, 8.0, "entirely past the end"),
    ]
    cuts = cut_clips(audio, cues, rate=rate, min_clip_s=0.2, max_clip_s=2.5)
    assert isinstance(cuts, ClipCuts)
    assert len(cuts.clips) + len(cuts.rejections) == len(cues)
    assert [c.index for c in cuts.clips] == [0, 4]
    assert cuts.clips[1].end_s == 3.0 and cuts.clips[1].seconds == pytest.approx(0.5)
    assert {r.index: r.rejected.reason for r in cuts.rejections} == {
        1: Reason.CLIP_TOO_SHORT,
        2: Reason.CLIP_TOO_SHORT,
        3: Reason.AUDIO_TOO_LONG,
        5: Reason.CUE_PAST_END,
        6: Reason.CUE_PAST_END,
        7: Reason.CUE_PAST_END,
    }
    assert cuts.rejections[-1].cue == cues[7]


def test_zero_length_cue_with_no_minimum_is_still_rejected_not_an_empty_clip():
    cuts = cut_clips(encode(tone(1.0, 8000), 8000), [Cue(0.5, 0.5, "x")], rate=8000, min_clip_s=0, max_clip_s=5)
    assert cuts.clips == [] and cuts.rejections[0].rejected.reason == Reason.CLIP_TOO_SHORT


def test_corrupt_recording_rejects_the_whole_sample():
    with pytest.raises(Rejected) as excinfo:
        cut_clips(b"not audio at all", [Cue(0, 1, "x")], rate=16000, min_clip_s=0.1, max_clip_s=5)
    assert excinfo.value.reason == Reason.AUDIO_CORRUPT
