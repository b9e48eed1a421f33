"""The ``align`` map stage: raw crawled media → samples with one caption each.

  * image (+ text fields)            → one image–text sample; the caption is the first field in
                                       ``caption_priority`` that is not empty, junk or too short
  * audio + subtitles                → one audio–text clip per cue, cut at the cue times (mono FLAC)
  * audio + linked transcript        → one audio–text sample, the whole recording
  * image + audio (a figure with its narration) → one sample carrying image, audio and the shared caption
Images are decoded, size-capped and re-encoded; audio is resampled to ``audio_rate``. Each cue counts as a
candidate of its own, so a recording with k cues yields k outcome rows (clips or cue rejects).
"""

from __future__ import annotations

from typing import Any

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.schemas.record import TEXT_FIELDS, stable_key
from mmcurate.schemas.stage_configs import AlignConfig
from mmcurate.stages.base import RecordStage, kept, rejected


class AlignStage(RecordStage[AlignConfig]):
    def setup(self) -> None:
        from mmcurate.stages.align.text import DEFAULT_JUNK_PATTERNS

        self.junk_patterns = list(self.config.junk_patterns) if self.config.junk_patterns is not None else DEFAULT_JUNK_PATTERNS

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        if record.get("image") is not None:
            return [self._image_sample(record)]
        if record.get("audio") is not None:
            if record.get("subtitles") is not None:
                return self._cue_clips(record)
            if record.get("transcript"):
                return [self._transcribed_audio(record)]
            self._audio(record["audio"])  # broken audio is the more basic fault than missing text
            raise Rejected(Reason.SUBTITLE_MISSING, "audio without captions, subtitles or a transcript")
        raise Rejected(Reason.NO_MEDIA, "record has neither image nor audio")

    # --- the three shapes of sample

    def _image_sample(self, record: dict[str, Any]) -> dict[str, Any]:
        image = self._image(record["image"])  # a broken image is the more basic fault than a poor caption
        text, source = self._caption(record)
        changes: dict[str, Any] = dict(
            image=image.data, image_format=image.format, image_width=image.width, image_height=image.height,
            text=text, text_source=source, subtitles=None,
        )
        if record.get("audio") is not None:  # a figure with its narration: the caption ties both
            audio = self._audio(record["audio"])
            changes.update(audio=audio.flac, audio_format="flac", audio_rate=audio.rate, audio_seconds=audio.seconds)
        return kept(record, **changes)

    def _transcribed_audio(self, record: dict[str, Any]) -> dict[str, Any]:
        from mmcurate.stages.align.text import choose_caption

        text, source = choose_caption({"transcript": record.get("transcript")}, priority=["transcript"],
                                      min_chars=self.config.min_caption_chars, junk_patterns=self.junk_patterns)
        audio = self._audio(record["audio"])
        return kept(record, audio=audio.flac, audio_format="flac", audio_rate=audio.rate, audio_seconds=audio.seconds,
                    text=text, text_source=source, subtitles=None)

    def _cue_clips(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        from mmcurate.stages.align.audio import cut_clips
        from mmcurate.stages.align.subtitles import parse_subtitles

        cues = parse_subtitles(record["subtitles"], url_or_name=record.get("subtitles_url") or "")
        if not cues:
            raise Rejected(Reason.SUBTITLE_MISSING, "subtitle file has no cues with text")
        cuts = cut_clips(record["audio"], cues, rate=self.config.audio_rate, min_clip_s=self.config.min_clip_s,
                         max_clip_s=self.config.max_clip_s, max_seconds=self.config.max_audio_s)
        rows = []
        for clip in cuts.clips:
            rows.append(kept(
                record, key=stable_key(record["key"], "cue", clip.index), parent=record["key"],
                audio=clip.flac, audio_format="flac", audio_rate=clip.rate, audio_seconds=clip.seconds,
                clip_start=clip.start_s, clip_end=clip.end_s, transcript=clip.text, text=clip.text,
                text_source="transcript", subtitles=None,
            ))
        for cue_reject in cuts.rejections:
            rows.append(rejected(
                record, cue_reject.rejected.reason, cue_reject.rejected.detail,
                key=stable_key(record["key"], "cue", cue_reject.index), parent=record["key"],
                clip_start=cue_reject.cue.start_s, clip_end=cue_reject.cue.end_s, transcript=cue_reject.cue.text,
            ))
        return rows

    # --- parts

    def _caption(self, record: dict[str, Any]) -> tuple[str, str]:
        from mmcurate.stages.align.text import choose_caption

        fields = {name: record.get(name) for name in TEXT_FIELDS}
        return choose_caption(fields, priority=list(self.config.caption_priority),
                              min_chars=self.config.min_caption_chars, junk_patterns=self.junk_patterns)

    def _image(self, data: bytes) -> Any:
        from mmcurate.stages.align.image import normalise_image

        cfg = self.config
        return normalise_image(data, max_side=cfg.image_max_side, max_pixels=cfg.image_max_pixels,
                               min_side=cfg.image_min_side, encode_format=cfg.image_format, quality=cfg.image_quality)

    def _audio(self, data: bytes) -> Any:
        from mmcurate.stages.align.audio import normalise_audio

        return normalise_audio(data, rate=self.config.audio_rate, max_seconds=self.config.max_audio_s)
