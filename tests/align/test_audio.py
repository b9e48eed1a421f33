"""Audio decoding, resampling, FLAC encoding and cue clip cutting, on synthesised tones."""

from __future__ import annotations

import io
import struct

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


# --- decode size is bounded by the header's samples, not only its duration


def silent_flac(seconds: float, rate: int, channels: int) -> bytes:
    """Silence compresses to almost nothing: a small file that declares a large decode. Written a second at a time."""
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as sound:
        block = np.zeros((rate, channels), dtype=np.int16)
        for _ in range(int(seconds)):
            sound.write(block)
    return buffer.getvalue()


def traced_peak_mb(call) -> tuple[object, float]:
    """(result or the exception raised, peak MB of Python/numpy allocations while ``call`` ran)."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            result = call()
        except Exception as err:  # noqa: BLE001 - the caller inspects it
            result = err
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def wav_with_header(rate: int, channels: int = 1, frames: int = 1000) -> bytes:
    """A valid 16-bit WAV, then its fmt chunk's rate (and byte rate) overwritten: what a hostile header claims."""
    data = bytearray(encode(np.zeros((frames, channels), dtype=np.float32), 16000, "WAV", "PCM_16"))
    assert data[12:16] == b"fmt "
    struct.pack_into("<II", data, 24, rate, min(rate * channels * 2, 0xFFFFFFFF))
    return bytes(data)


def test_eight_channel_192k_silence_rejected_by_samples_not_seconds():
    # The reviewer's file: 93 KB, 60 s (well under max_audio_s), 8 x 192 kHz = 92M samples = 368 MB of float32.
    data = silent_flac(60, 192_000, 8)
    assert len(data) < 200_000
    result, peak_mb = traced_peak_mb(lambda: normalise_audio(data, rate=16000, max_seconds=600))
    assert isinstance(result, Rejected) and result.reason == Reason.AUDIO_TOO_LONG, result
    assert "92160000 samples" in result.detail
    assert peak_mb < 32  # rejected from the header: the old code decoded it all (~370 MB traced) and kept it


def test_sample_cap_is_max_seconds_of_48k_stereo_whatever_the_layout():
    # max_seconds=1 allows 96,000 samples: 1 s of 48 kHz stereo or 24 kHz x 4 channels, not 48 kHz x 4 channels.
    for rate, channels in [(48_000, 2), (24_000, 4), (96_000, 1)]:
        samples, got_rate = decode_audio(silent_flac(1, rate, channels), max_seconds=1)
        assert (len(samples), got_rate) == (rate, rate)
    for rate, channels in [(48_000, 4), (192_000, 8), (192_000, 1)]:
        with pytest.raises(Rejected) as excinfo:
            decode_audio(silent_flac(1, rate, channels), max_seconds=1)
        assert excinfo.value.reason == Reason.AUDIO_TOO_LONG


def test_multichannel_audio_within_the_cap_decodes_in_bounded_memory():
    # 8 x 48 kHz x 120 s = 46M samples, under the 600 s cap; decoding it whole would hold 184 MB of float32 frames,
    # blockwise downmixing holds the 23 MB mono result plus one block.
    data = silent_flac(120, 48_000, 8)
    result, peak_mb = traced_peak_mb(lambda: normalise_audio(data, rate=16000, max_seconds=600))
    assert not isinstance(result, Exception), result
    assert result.seconds == pytest.approx(120.0)
    assert peak_mb < 80


@pytest.mark.parametrize(
    "rate,channels", [(2_000_000_000, 1), (384_001, 1), (16000, 9)], ids=["2GHz", "over-384k", "9-channels"]
)
def test_absurd_rate_or_channel_count_is_rejected_not_an_error(rate, channels):
    data = wav_with_header(rate, channels)
    assert soundfile.info(io.BytesIO(data)).samplerate == rate  # libsndfile itself accepts the header
    for call in (
        lambda: decode_audio(data, max_seconds=600),
        lambda: decode_audio(data),
        lambda: normalise_audio(data, rate=16000, max_seconds=600),  # used to be a ValueError from encode_flac
        lambda: cut_clips(data, [Cue(0, 1, "x")], rate=16000, min_clip_s=0.1, max_clip_s=5, max_seconds=600),
    ):
        with pytest.raises(Rejected) as excinfo:
            call()
        assert excinfo.value.reason == Reason.AUDIO_CORRUPT


def test_highest_accepted_rate_still_decodes():
    samples, rate = decode_audio(encode(tone(0.5, 384_000), 384_000, "WAV", "PCM_16"), max_seconds=600)
    assert (rate, len(samples)) == (384_000, 192_000)


def test_header_understating_its_length_cannot_bypass_the_cap(monkeypatch):
    # A decoder that hands back more frames than its header declared (here: a header claiming 1 s of a 60 s,
    # 8 x 192 kHz stream) must stop at the cap and reject, not decode the rest.
    data = silent_flac(60, 192_000, 8)

    class UnderstatingSoundFile(soundfile.SoundFile):
        @property
        def frames(self):
            return self.samplerate

    monkeypatch.setattr(soundfile, "SoundFile", UnderstatingSoundFile)
    result, peak_mb = traced_peak_mb(lambda: decode_audio(data, max_seconds=600))
    assert isinstance(result, Rejected) and result.reason == Reason.AUDIO_TOO_LONG, result
    assert "decoded at least" in result.detail
    assert peak_mb < 80  # the mono cap (57.6M / 8 frames, 29 MB) plus one block, never the 368 MB stream


def test_flac_streaminfo_understating_its_length_decodes_no_more_than_declared():
    data = bytearray(silent_flac(60, 192_000, 8))
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate(20) channels(3) bits(5) total samples(36)
    data[18:26] = ((fields & ~((1 << 36) - 1)) | 192_000).to_bytes(8, "big")
    result, peak_mb = traced_peak_mb(lambda: decode_audio(bytes(data), max_seconds=600))
    assert isinstance(result, tuple) and len(result[0]) <= 192_000
    assert peak_mb < 32


@pytest.mark.parametrize("channels", [1, 2, 3, 8])
def test_blockwise_decode_matches_a_whole_read_and_mean(channels):
    # Several decode blocks long, with a partial last block: the same samples, bit for bit, as the old whole read.
    rng = np.random.default_rng(channels)
    frames = rng.uniform(-0.9, 0.9, size=(150_001, channels)).astype(np.float32)
    for fmt, subtype in [("WAV", "FLOAT"), ("FLAC", "PCM_16")]:
        data = encode(frames, 44100, fmt, subtype)
        whole = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
        expected = whole.mean(axis=1, dtype=np.float32) if channels > 1 else whole[:, 0]
        samples, rate = decode_audio(data, max_seconds=600)
        assert rate == 44100 and samples.dtype == np.float32 and samples.flags.c_contiguous
        np.testing.assert_array_equal(samples, expected)
