"""Choosing the caption for an image (or other media) from the text fields a page offers.

Fields are tried in priority order (e.g. ``figcaption``, ``alt``, ``title``); the first that passes every check
wins. Checks, in order: non-empty after whitespace normalisation, not junk, at least ``min_chars`` characters.

Junk patterns are case-insensitive regexes matched against the *whole* caption (``re.fullmatch``), after stripping
surrounding punctuation: "image" and "IMG_1234.jpg" are junk, "an image of a cat" is not. ``DEFAULT_JUNK_PATTERNS``
covers placeholder words (image, photo, picture, thumbnail, logo, icon, banner, spacer, untitled, ...), calls to
action ("click here", "read more"), camera and file names (``IMG_1234.jpg``, ``DSC_0042``), bare URLs, pure
numbers/dates and null-ish values ("null", "undefined", "n/a").

When every field fails, the rejection carries the reason of the candidate that got furthest through the checks
(``TEXT_TOO_SHORT`` > ``JUNK_TEXT`` > ``NO_TEXT``) and a detail with each field's verdict.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from mmcurate.schemas.reasons import Reason, Rejected

_PLACEHOLDER_WORDS = (
    r"image|img|photo|photograph|picture|pic|graphic|icon|logo|banner|thumbnail|thumb|spacer|placeholder|"
    r"blank|untitled|no title|alt|alt text|default|avatar|screenshot|screen shot|figure|fig|video|button"
)
_IMAGE_EXTENSIONS = r"jpe?g|png|gif|webp|bmp|tiff?|svg|heic|avif|ico"

DEFAULT_JUNK_PATTERNS: list[str] = [
    # a placeholder word, optionally with an article and/or a number: "Image", "photo 3", "an image", "Figure 2"
    rf"(?:an?|the|my)?\s*(?:{_PLACEHOLDER_WORDS})(?:\s*[#:_-]?\s*\d+)?",
    r"(?:click|tap)\s+(?:here|to\s+(?:enlarge|zoom|view|expand|see\s+more)).*",
    r"(?:read|see|view)\s+more|more\s+info|learn\s+more|download|share|loading\.*",
    # a file name: "IMG_1234.jpg", "hero-banner@2x.png", "my photo.jpeg"
    rf"[\w@~().,+ -]*\.(?:{_IMAGE_EXTENSIONS})",
    # camera / phone default names without extension: "DSC_0042", "IMG-20190102-WA0003", "PXL_20230101_123456"
    r"(?:img|dsc[nf]?|dcim|pxl|p|mvimg|gopr|photo|image|screenshot)[\s_-]*[\d_-]{3,}\w*",
    r"(?:https?://|www\.)\S+",  # a bare URL
    r"[\d\s._:/-]+",  # only digits and separators: "1234", "2019-01-02", "12:30"
    r"null|none|undefined|nan|n/?a|tbd|todo|test|\W*",
]


class ChosenCaption(NamedTuple):
    """The caption and which field it came from (unpacks as ``text, source_field``)."""

    text: str
    source_field: str


_WHITESPACE = re.compile(r"\s+")
# Surrounding punctuation does not rescue junk: "Image." and "[photo]" are still placeholders.
_EDGE_PUNCTUATION = " \t.,;:!?-_|*\"'()[]{}<>«»“”‘’"
# Verdict ranking: how far a candidate got through the checks, best last.
_REASON_RANK = {Reason.NO_TEXT: 0, Reason.JUNK_TEXT: 1, Reason.TEXT_TOO_SHORT: 2}


def normalise_whitespace(text: str | None) -> str:
    return _WHITESPACE.sub(" ", text or "").strip()


@lru_cache(maxsize=16)
def _compile_junk(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)


def junk_match(text: str, junk_patterns: list[str]) -> str | None:
    """The first pattern that matches the whole of ``text`` (edge punctuation ignored), or None."""
    core = text.strip(_EDGE_PUNCTUATION)
    for compiled in _compile_junk(tuple(junk_patterns)):
        if compiled.fullmatch(core):
            return compiled.pattern
    return None


def choose_caption(
    fields: dict[str, str | None],
    *,
    priority: list[str],
    min_chars: int,
    junk_patterns: list[str] = DEFAULT_JUNK_PATTERNS,
) -> ChosenCaption:
    """The first field in ``priority`` whose normalised text passes; fields not named in ``priority`` are ignored."""
    verdicts: list[str] = []
    best_failure = Reason.NO_TEXT
    for field_name in priority:
        text = normalise_whitespace(fields.get(field_name))
        if not text:
            failure, verdict = Reason.NO_TEXT, "empty" if field_name in fields else "absent"
        elif junk_match(text, junk_patterns) is not None:
            failure, verdict = Reason.JUNK_TEXT, f"junk {text[:40]!r}"
        elif len(text) < min_chars:
            failure, verdict = Reason.TEXT_TOO_SHORT, f"too short ({len(text)} < {min_chars} chars)"
        else:
            return ChosenCaption(text=text, source_field=field_name)
        verdicts.append(f"{field_name}: {verdict}")
        if _REASON_RANK[failure] > _REASON_RANK[best_failure]:
            best_failure = failure
    raise Rejected(best_failure, "; ".join(verdicts) or "no caption fields in priority")
