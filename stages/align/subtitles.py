"""Subtitle (WebVTT / SubRip) and plain-transcript parsing for the align stage.

Parsing is delegated to ``webvtt-py`` and ``srt``; this module decides the format, decodes strictly, cleans cue
text and turns every way a file can be unusable into a ``Rejected`` with a machine-readable reason.

Policy, decided here once so every caller behaves the same:

* **Encoding.** Bytes must be valid UTF-8 (a leading BOM is allowed). Anything else is ``NOT_UTF8``; we never
  guess a legacy code page, because a wrong guess produces fluent-looking garbage captions.
* **Format.** A ``WEBVTT`` header means WebVTT whatever the name says. A file declared WebVTT (``.vtt`` or
  ``text/vtt``) without the header is ``SUBTITLE_MALFORMED``. Otherwise ``.srt`` / a SubRip content type / a
  SubRip-looking first block means SubRip. Anything else is ``SUBTITLE_MALFORMED``.
* **Malformed cues.** webvtt-py silently skips cue blocks whose timings do not parse, and ``srt`` folds them
  into the previous cue's text; we check every ``-->`` line became a cue and otherwise reject the whole file, so
  one broken timestamp cannot put wrong text on a clip. Other unparseable content is rejected by the libraries.
* **Negative-length cues** (end before start) make the whole file ``SUBTITLE_MALFORMED``: inverted timing means
  the timeline cannot be trusted. **Zero-length cues** are kept; clip cutting rejects them as too short, so they
  are accounted for per cue.
* **Overlapping cues** are kept as they are: real subtitles overlap (two speakers, roll-up captions) and each cue
  becomes its own clip, so audio may be shared between clips. Exact duplicates (same start, end and text, as
  roll-up auto-captions repeat) are collapsed to one.
* **Empty cues** (no text after cleaning) are dropped. A file with no cues at all is ``SUBTITLE_MISSING``; a file
  whose cues are all empty is ``NO_TEXT``.
* **Cleaning.** Markup is removed (WebVTT cue tags ``<v Speaker>``, ``<c.x>``, ``<i>``, inline timestamps; SubRip
  ``<i>``/``<font>`` and ASS ``{\\an8}`` overrides), WebVTT character references are unescaped, whitespace
  (including line breaks inside a cue) collapses to single spaces. Speaker names in ``<v>`` tags are dropped.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

import srt
import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from mmcurate.schemas.reasons import Reason, Rejected

SubtitleFormat = Literal["vtt", "srt"]

_VTT_CONTENT_TYPES = {"text/vtt"}
_SRT_CONTENT_TYPES = {"application/x-subrip", "text/srt", "application/srt", "text/x-srt"}
# SubRip block: counter line, then "HH:MM:SS,mmm --> ..." timing line.
_SRT_FIRST_BLOCK = re.compile(r"\A\s*\d+\s*\r?\n\s*\d+:\d+:\d+[,.]\d+\s*-->")
_MARKUP_TAG = re.compile(r"<[^>\n]*>")
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Cue:
    """One timed piece of text. Times are seconds from the start of the media."""

    start_s: float
    end_s: float
    text: str


def decode_utf8(data: bytes) -> str:
    """Strict UTF-8 with an optional BOM; anything else is ``NOT_UTF8``."""
    try:
        return data.decode("utf-8-sig", errors="strict")
    except UnicodeDecodeError as err:
        raise Rejected(Reason.NOT_UTF8, f"byte {err.start}: {err.reason}") from None


def detect_subtitle_format(text: str, *, url_or_name: str = "", content_type: str | None = None) -> SubtitleFormat:
    """Decide WebVTT vs SubRip from the header first, then the declared name/type, then the content."""
    if text.lstrip("\ufeff").startswith("WEBVTT"):
        return "vtt"
    suffix = PurePosixPath(urlsplit(url_or_name).path if "://" in url_or_name else url_or_name).suffix.lower()
    mime = (content_type or "").split(";")[0].strip().lower()
    if suffix == ".vtt" or mime in _VTT_CONTENT_TYPES:
        raise Rejected(Reason.SUBTITLE_MALFORMED, "declared WebVTT but the WEBVTT header is missing")
    if suffix == ".srt" or mime in _SRT_CONTENT_TYPES or _SRT_FIRST_BLOCK.match(text):
        return "srt"
    raise Rejected(Reason.SUBTITLE_MALFORMED, "neither a WEBVTT header nor a SubRip cue block at the start")


def clean_cue_text(text: str, *, unescape_entities: bool) -> str:
    """Strip markup and collapse whitespace; ``unescape_entities`` for WebVTT, which defines ``&amp;`` etc."""
    text = _ASS_OVERRIDE.sub("", _MARKUP_TAG.sub("", text))
    if unescape_entities:
        text = html.unescape(text)
    return _WHITESPACE.sub(" ", text).strip()


def parse_subtitles(data: bytes, *, url_or_name: str = "", content_type: str | None = None) -> list[Cue]:
    """Parse a WebVTT or SubRip file into clean cues sorted by (start, end); see the module docstring for policy."""
    text = decode_utf8(data)
    if not text.strip():
        raise Rejected(Reason.SUBTITLE_MISSING, "subtitle body is empty")
    subtitle_format = detect_subtitle_format(text, url_or_name=url_or_name, content_type=content_type)
    raw_cues = _parse_vtt(text) if subtitle_format == "vtt" else _parse_srt(text)
    if not raw_cues:
        raise Rejected(Reason.SUBTITLE_MISSING, f"{subtitle_format} file has no cues")

    for cue in raw_cues:
        if cue.end_s < cue.start_s:
            raise Rejected(
                Reason.SUBTITLE_MALFORMED,
                f"cue ends before it starts ({cue.start_s:.3f}s --> {cue.end_s:.3f}s): {cue.text[:60]!r}",
            )
    # dict keeps first occurrence: exact duplicates collapse, order is then fixed by the sort.
    unique = dict.fromkeys(cue for cue in raw_cues if cue.text)
    if not unique:
        raise Rejected(Reason.NO_TEXT, f"all {len(raw_cues)} cues are empty after removing markup")
    return sorted(unique, key=lambda cue: (cue.start_s, cue.end_s))


def _parse_vtt(text: str) -> list[Cue]:
    try:
        captions = webvtt.from_string(text).captions
    except (MalformedFileError, MalformedCaptionError, ValueError) as err:
        raise Rejected(Reason.SUBTITLE_MALFORMED, f"webvtt: {err}") from None
    # webvtt-py drops cue blocks with unparseable timings without telling us; every "-->" line is a cue timing
    # line (the spec forbids "-->" in cue text, notes and styles), so a shortfall means a cue was lost.
    timing_lines = [line for line in text.splitlines() if "-->" in line]
    if len(timing_lines) != len(captions):
        unparsed = next((line for line in timing_lines if not _vtt_timing_parses(line)), "")
        raise Rejected(
            Reason.SUBTITLE_MALFORMED,
            f"{len(timing_lines) - len(captions)} of {len(timing_lines)} cue timings did not parse, "
            f"e.g. {unparsed.strip()[:80]!r}",
        )
    return [
        Cue(
            start_s=caption.start_time.in_milliseconds() / 1000,
            end_s=caption.end_time.in_milliseconds() / 1000,
            text=clean_cue_text(caption.raw_text, unescape_entities=True),
        )
        for caption in captions
    ]


def _vtt_timing_parses(timing_line: str) -> bool:
    """Whether webvtt-py accepts this one timing line; only used to name an example in a rejection."""
    try:
        return len(webvtt.from_string(f"WEBVTT\n\n{timing_line}\nx\n").captions) == 1
    except (MalformedFileError, MalformedCaptionError, ValueError):
        return False


def _parse_srt(text: str) -> list[Cue]:
    try:
        subtitles = list(srt.parse(text))
    except (srt.SRTParseError, ValueError) as err:  # TimestampParseError is a ValueError
        raise Rejected(Reason.SUBTITLE_MALFORMED, f"srt: {err}") from None
    # srt folds a block whose timing does not parse into the previous cue's text; a "-->" left in any cue's
    # text is that lost cue.
    swallowed = next((subtitle for subtitle in subtitles if "-->" in subtitle.content), None)
    if swallowed is not None:
        bad_line = next(line for line in swallowed.content.splitlines() if "-->" in line)
        raise Rejected(Reason.SUBTITLE_MALFORMED, f"cue timing did not parse: {bad_line.strip()[:80]!r}")
    return [
        Cue(
            start_s=subtitle.start.total_seconds(),
            end_s=subtitle.end.total_seconds(),
            text=clean_cue_text(subtitle.content, unescape_entities=False),
        )
        for subtitle in subtitles
    ]


def parse_transcript(data: bytes) -> str:
    """A plain-text transcript: strict UTF-8, whitespace tidied, paragraph breaks kept; empty is ``NO_TEXT``."""
    text = decode_utf8(data)
    lines = [_WHITESPACE.sub(" ", line).strip() for line in text.splitlines()]
    # Keep single blank lines as paragraph separators, drop runs of them and the ones at either end.
    paragraphs = re.split(r"\n{2,}", "\n".join(lines).strip())
    transcript = "\n\n".join(paragraph.strip() for paragraph in paragraphs if paragraph.strip())
    if not transcript:
        raise Rejected(Reason.NO_TEXT, "transcript is empty or whitespace")
    return transcript
