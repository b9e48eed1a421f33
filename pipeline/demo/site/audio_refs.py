"""Planning the demo site's audio references: which clip, in which container, with which subtitles and label."""

from __future__ import annotations

import random

from mmcurate.pipeline.demo.site import audio, images
from mmcurate.pipeline.demo.site.assets import AssetRef
from mmcurate.pipeline.demo.site.labels import Label

# (clip id, audio format, subtitle format, label). Each clip's audio appears once in the site (so no accidental
# audio duplicates); the truncated clip is the only copy of "garden".
AUDIO_PAGES: tuple[tuple[str, str, str, Label], ...] = (
    ("yellow_star", "flac", "vtt", Label.CLEAN),
    ("cat", "flac", "vtt", Label.CLEAN),
    ("rain", "flac", "vtt", Label.CLEAN),
    ("bridge", "flac", "vtt", Label.CLEAN),
    ("rocket", "flac", "vtt", Label.CLEAN),
    ("ticket", "wav", "vtt", Label.CLEAN),
    ("coffee", "flac", "srt", Label.CLEAN),
    ("library", "flac", "srt", Label.CLEAN),
    ("diamonds", "flac", "vtt_bad_timestamps", Label.MALFORMED_SUBTITLE),
    ("clock", "flac", "vtt_no_header", Label.MALFORMED_SUBTITLE),
    ("cafe", "flac", "vtt_latin1", Label.NOT_UTF8),
    ("garden", "flac_truncated", "vtt", Label.BROKEN_AUDIO),
)
# Figures that pair an image, its narration and a figcaption carrying the narration's text.
NARRATED_FIGURES: tuple[tuple[str, str, str, str], ...] = (
    # (clip id, image: "shape:<shape>:<colour>:<background>" or "photo:<name>", audio format, subtitle format)
    ("red_circle", "shape:circle:red:pale blue", "flac", "vtt"),  # "... on a pale background."
    ("blue_square", "shape:square:blue:light grey", "wav", "vtt"),
    ("astronaut", "photo:astronaut", "flac", "srt"),
)


def _subtitle(clip: audio.Clip, fmt: str) -> tuple[bytes, str]:
    if fmt == "vtt":
        return audio.vtt_text(clip.cues).encode("utf-8"), "vtt"
    if fmt == "srt":
        return audio.srt_text(clip.cues).encode("utf-8"), "srt"
    if fmt == "vtt_bad_timestamps":
        return audio.vtt_bad_timestamps(clip.cues).encode("utf-8"), "vtt"
    if fmt == "vtt_no_header":
        return audio.vtt_missing_header(clip.cues).encode("utf-8"), "vtt"
    if fmt == "vtt_latin1":
        return audio.vtt_text(clip.cues).encode("latin-1"), "vtt"
    raise ValueError(f"unknown subtitle variant {fmt!r}")


def clip_ref(clip: audio.Clip, audio_fmt: str, subtitle_fmt: str, label: Label, markup: str) -> AssetRef:
    if audio_fmt == "wav":
        body, fmt = audio.wav_bytes(clip), "wav"
    elif audio_fmt == "flac_truncated":
        body, fmt = images.truncated(audio.flac_bytes(clip), 0.5), "flac"
    else:
        body, fmt = audio.flac_bytes(clip), "flac"
    subtitle_body, subtitle_ext = _subtitle(clip, subtitle_fmt)
    return AssetRef(
        url=f"/media/audio/{clip.id}.{fmt}",
        kind="audio",
        label=label,
        markup=markup,
        shown_text=clip.text,
        true_caption=clip.text,
        body=body,
        media_format=fmt,
        subtitle_url=f"/media/subs/{clip.id}.{subtitle_ext}",
        subtitle_format=subtitle_ext,
        subtitle_body=subtitle_body,
        cues=clip.cues,
    )


def audio_failures(rng: random.Random) -> list[AssetRef]:
    """Random bytes named .wav (nothing to say about it) and an audio link that 404s."""
    noise = AssetRef(
        url="/media/audio/static_noise.wav",
        kind="audio",
        label=Label.BROKEN_AUDIO,
        markup="audio",
        shown_text="Field recording from the harbour",
        true_caption=None,
        body=audio.random_wav(rng),
        media_format="wav",
    )
    lost = AssetRef(
        url="/media/audio/lost_interview.flac",
        kind="audio",
        label=Label.BROKEN_LINK,
        markup="audio",
        shown_text="Interview with the lighthouse keeper",
        true_caption=None,
        expected_status=404,
        media_format="flac",
    )
    return [noise, lost]
