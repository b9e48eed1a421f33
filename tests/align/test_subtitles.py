"""Subtitle and transcript parsing: formats, cleaning, and every rejection path."""

from __future__ import annotations

import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.align.subtitles import Cue, parse_subtitles, parse_transcript

VTT_WITH_TAGS = """WEBVTT - lecture

NOTE a comment block that is not a cue

intro
00:00:01.000 --> 00:00:02.500 align:start position:0%
<v Roger Bingham>Hello &amp; <i>welcome</i></v>
to   the <c.yellow>show</c>

00:00:04.000 --> 00:00:05.000
<00:00:04.500><c>inline</c> timestamp

00:00:03.000 --> 00:00:03.900
<b></b>

00:00:02.000 --> 00:00:03.000
overlaps the first
"""


def reason_of(excinfo: pytest.ExceptionInfo[Rejected]) -> str:
    return excinfo.value.reason


def test_vtt_tags_stripped_entities_unescaped_sorted_and_empty_dropped():
    cues = parse_subtitles(VTT_WITH_TAGS.encode())
    assert cues == [
        Cue(1.0, 2.5, "Hello & welcome to the show"),
        Cue(2.0, 3.0, "overlaps the first"),  # overlap with the cue before is kept as is
        Cue(4.0, 5.0, "inline timestamp"),
    ]


def test_vtt_with_bom_and_crlf():
    data = "\ufeffWEBVTT\r\n\r\n00:01.000 --> 00:02.000\r\nhi there\r\n".encode()
    assert parse_subtitles(data) == [Cue(1.0, 2.0, "hi there")]


def test_srt_parsed_with_markup_removed():
    data = (
        b"1\n00:00:01,000 --> 00:00:02,000\n<i>Hello</i>\nworld\n\n"
        b'2\n00:00:02,500 --> 00:00:04,250\n{\\an8}<font color="red">Second</font> line\n'
    )
    assert parse_subtitles(data, url_or_name="movie.srt") == [
        Cue(1.0, 2.0, "Hello world"),
        Cue(2.5, 4.25, "Second line"),
    ]


def test_srt_detected_from_content_without_name():
    data = b"1\n00:00:01,000 --> 00:00:02,000\nsniffed\n"
    assert parse_subtitles(data) == [Cue(1.0, 2.0, "sniffed")]


def test_header_wins_over_a_misleading_name():
    data = b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nreally vtt\n"
    assert parse_subtitles(data, url_or_name="https://x.org/a/subs.srt?x=1") == [Cue(1.0, 2.0, "really vtt")]


@pytest.mark.parametrize(
    "declared", [{"url_or_name": "https://x.org/captions.vtt?lang=en"}, {"content_type": "text/vtt; charset=utf-8"}]
)
def test_declared_vtt_without_header_is_malformed(declared):
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(b"00:00:01.000 --> 00:00:02.000\nno header\n", **declared)
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED
    assert "WEBVTT header" in excinfo.value.detail


def test_unrecognised_format_is_malformed():
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(b"just some words\nnot subtitles\n")
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED


def test_vtt_bad_timestamp_rejects_file_instead_of_silently_dropping_the_cue():
    data = b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\ngood\n\n00:00:xx.000 --> 00:00:04.000\nbad\n"
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data)
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED
    assert "1 of 2" in excinfo.value.detail and "00:00:xx.000" in excinfo.value.detail


def test_vtt_out_of_range_minutes_rejected():
    data = b"WEBVTT\n\n00:75:01.000 --> 00:75:02.000\nbad minutes\n"
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data)
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED


def test_srt_bad_timestamp_rejected():
    data = b"1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:zz,000 --> 00:00:04,000\nbad\n"
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data, url_or_name="a.srt")
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED


@pytest.mark.parametrize(
    "data",
    [
        b"WEBVTT\n\n00:00:05.000 --> 00:00:03.000\nbackwards\n",
        b"1\n00:00:05,000 --> 00:00:03,000\nbackwards\n",
    ],
)
def test_negative_length_cue_rejects_file(data):
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data)
    assert reason_of(excinfo) == Reason.SUBTITLE_MALFORMED
    assert "ends before it starts" in excinfo.value.detail


def test_zero_length_cue_kept_for_clip_cutting_to_reject():
    data = b"WEBVTT\n\n00:00:01.000 --> 00:00:01.000\ninstant\n"
    assert parse_subtitles(data) == [Cue(1.0, 1.0, "instant")]


def test_exact_duplicate_cues_collapse():
    block = b"00:00:01.000 --> 00:00:02.000\nsame\n\n"
    assert parse_subtitles(b"WEBVTT\n\n" + block * 3) == [Cue(1.0, 2.0, "same")]


def test_non_utf8_rejected():
    data = "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nça va\n".encode("latin-1")
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data)
    assert reason_of(excinfo) == Reason.NOT_UTF8


@pytest.mark.parametrize("data", [b"", b"  \n\n "])
def test_empty_body_is_missing(data):
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(data, url_or_name="a.vtt")
    assert reason_of(excinfo) == Reason.SUBTITLE_MISSING


def test_header_only_vtt_is_missing():
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(b"WEBVTT\n\nNOTE nothing here\n")
    assert reason_of(excinfo) == Reason.SUBTITLE_MISSING


def test_all_cues_empty_is_no_text():
    with pytest.raises(Rejected) as excinfo:
        parse_subtitles(b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<i> </i>\n")
    assert reason_of(excinfo) == Reason.NO_TEXT


def test_transcript_tidied_with_paragraphs_kept():
    data = "\ufeff  First   line\r\nsame paragraph\n\n\n\n  Second\tparagraph  \n".encode()
    assert parse_transcript(data) == "First line\nsame paragraph\n\nSecond paragraph"


def test_transcript_not_utf8_and_empty():
    with pytest.raises(Rejected) as excinfo:
        parse_transcript(b"caf\xe9")
    assert reason_of(excinfo) == Reason.NOT_UTF8
    with pytest.raises(Rejected) as excinfo:
        parse_transcript(b" \n\t\n")
    assert reason_of(excinfo) == Reason.NO_TEXT
