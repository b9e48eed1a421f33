"""Caption choice: priority order, junk detection, length, and the reason when nothing passes."""

from __future__ import annotations

import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.align.text import DEFAULT_JUNK_PATTERNS, ChosenCaption, choose_caption, junk_match

PRIORITY = ["figcaption", "alt", "title"]


def test_first_passing_field_in_priority_order_wins_and_is_normalised():
    fields = {"title": "A title that is long enough", "alt": "  A brown   dog\n on a beach ", "figcaption": None}
    chosen = choose_caption(fields, priority=PRIORITY, min_chars=5)
    assert chosen == ChosenCaption("A brown dog on a beach", "alt")
    text, source = chosen
    assert (text, source) == ("A brown dog on a beach", "alt")


def test_junk_field_is_skipped_for_a_later_good_one():
    fields = {"figcaption": "IMG_1234.jpg", "alt": "Click here to enlarge", "title": "Sunset over Lisbon harbour"}
    assert choose_caption(fields, priority=PRIORITY, min_chars=5) == ChosenCaption(
        "Sunset over Lisbon harbour", "title"
    )


@pytest.mark.parametrize(
    "text",
    [
        "image",
        "Photo",
        "picture",
        "an image",
        "Untitled",
        "untitled-1",
        "IMG_1234.jpg",
        "hero-banner@2x.png",
        "DSC_0042",
        "IMG-20190102-WA0003",
        "https://example.com/a.png",
        "www.example.com",
        "thumbnail",
        "logo",
        "spacer",
        "[photo]",
        "Image.",
        "click here",
        "12345",
        "2019-01-02",
        "null",
        "n/a",
        "...",
        "Figure 2",
    ],
)
def test_default_junk_patterns_catch_placeholders(text):
    assert junk_match(text, DEFAULT_JUNK_PATTERNS) is not None


@pytest.mark.parametrize(
    "text",
    [
        "an image of a cat on a sofa",
        "Photo of the Eiffel Tower at night",
        "Acme Corp logo on a blue background",
        "The 2019 team photo",
        "Picture this: a quiet lake",
        "Download speeds compared across ISPs in 2020",
    ],
)
def test_real_captions_mentioning_junk_words_are_not_junk(text):
    assert junk_match(text, DEFAULT_JUNK_PATTERNS) is None


def test_all_empty_is_no_text_with_per_field_verdicts():
    with pytest.raises(Rejected) as excinfo:
        choose_caption({"alt": "   ", "title": None}, priority=PRIORITY, min_chars=5)
    assert excinfo.value.reason == Reason.NO_TEXT
    assert excinfo.value.detail == "figcaption: absent; alt: empty; title: empty"


def test_junk_beats_empty_as_the_reason():
    with pytest.raises(Rejected) as excinfo:
        choose_caption({"alt": "image", "title": ""}, priority=PRIORITY, min_chars=5)
    assert excinfo.value.reason == Reason.JUNK_TEXT
    assert "alt: junk 'image'" in excinfo.value.detail


def test_too_short_beats_junk_as_the_reason():
    with pytest.raises(Rejected) as excinfo:
        choose_caption({"figcaption": "photo", "alt": "Cat", "title": ""}, priority=PRIORITY, min_chars=5)
    assert excinfo.value.reason == Reason.TEXT_TOO_SHORT
    assert "alt: too short (3 < 5 chars)" in excinfo.value.detail


def test_fields_outside_priority_are_ignored():
    with pytest.raises(Rejected) as excinfo:
        choose_caption({"og:description": "A perfectly good caption"}, priority=["alt"], min_chars=1)
    assert excinfo.value.reason == Reason.NO_TEXT


def test_custom_junk_patterns_replace_defaults():
    assert choose_caption({"alt": "image"}, priority=["alt"], min_chars=1, junk_patterns=[]) == ("image", "alt")
    with pytest.raises(Rejected) as excinfo:
        choose_caption({"alt": "Stock photo by ACME"}, priority=["alt"], min_chars=1, junk_patterns=[r"stock photo.*"])
    assert excinfo.value.reason == Reason.JUNK_TEXT
