"""Fetch the media a page referenced: the image and/or the audio, and the audio's subtitles or transcript."""

from __future__ import annotations

from typing import Any

from mmcurate.schemas.reasons import Rejected
from mmcurate.schemas.stage_configs import CrawlConfig
from mmcurate.stages.base import RecordStage, kept

IMAGE_TYPES = ("image/",)
AUDIO_TYPES = ("audio/", "video/", "application/ogg")
SUBTITLE_TYPES = ("text/", "application/x-subrip", "application/octet-stream")


class MediaFetcher(RecordStage[CrawlConfig]):
    """One media reference → a record carrying the fetched bytes, or a reject row naming the part that failed."""


    def setup(self) -> None:
        from mmcurate.stages.crawl.fetch import Fetcher

        self.fetcher = Fetcher(self.config.fetch)

    def _get(self, part: str, url: str, accept: tuple[str, ...]) -> Any:
        try:
            return self.fetcher.fetch(url, accept=accept)
        except Rejected as rej:
            raise Rejected(rej.reason, f"{part} {url}: {rej.detail}") from None

    def process(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        changes: dict[str, Any] = {}
        if record.get("image_url"):
            changes["image"] = self._get("image", record["image_url"], IMAGE_TYPES).body
        if record.get("audio_url"):
            changes["audio"] = self._get("audio", record["audio_url"], AUDIO_TYPES).body
        if record.get("subtitles_url"):
            changes["subtitles"] = self._get("subtitles", record["subtitles_url"], SUBTITLE_TYPES).body
        if record.get("transcript_url"):
            body = self._get("transcript", record["transcript_url"], SUBTITLE_TYPES).body
            changes["transcript"] = transcript_text(body, record["transcript_url"])
        return [kept(record, **changes)]


def transcript_text(body: bytes, url: str) -> str:
    """A linked transcript's text: strict UTF-8, as for subtitles."""
    from mmcurate.stages.align.subtitles import decode_utf8

    try:
        return decode_utf8(body)
    except Rejected as rej:
        raise Rejected(rej.reason, f"transcript {url}: {rej.detail}") from None
