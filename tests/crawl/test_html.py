"""HTML extraction: media grouping, URLs, captions, decoding and page-level robots directives."""

from __future__ import annotations

import pytest

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.html import MediaRef, Track, extract_page
from mmcurate.stages.crawl.html_scan import MAX_CAPTURE_CHARS

PAGE = "https://example.com/articles/cats.html"


def extract(html: str, content_type: str | None = "text/html; charset=utf-8", **kwargs):
    return extract_page(html.encode("utf-8"), PAGE, content_type, **kwargs)


def test_figure_with_image_narration_and_caption_is_one_media_ref():
    page = extract("""<figure>
             <img src="img/cat.jpg" alt="  A   tabby cat
                 asleep ">
             <audio controls src="/audio/cat.mp3">
               <track kind="captions" srclang="en" src="cat.en.vtt">
               <track kind="subtitles" srclang="fr" src="cat.fr.vtt#t=1">
               <track kind="chapters" src="cat.chapters.vtt">
               <track src="cat.default.vtt">
             </audio>
             <figcaption> The cat,
               narrated. </figcaption>
             <p><a rel="transcript" href="cat-transcript.txt">Read the transcript</a></p>
           </figure>""")
    assert page.media == [
        MediaRef(
            page_url=PAGE,
            position=0,
            image_url="https://example.com/articles/img/cat.jpg",
            audio_url="https://example.com/audio/cat.mp3",
            alt="A tabby cat asleep",
            figcaption="The cat, narrated.",
            tracks=[
                Track("captions", "en", "https://example.com/articles/cat.en.vtt"),
                Track("subtitles", "fr", "https://example.com/articles/cat.fr.vtt"),
                Track("subtitles", None, "https://example.com/articles/cat.default.vtt"),  # no kind: subtitles
            ],
            transcript_url="https://example.com/articles/cat-transcript.txt",
        )
    ]


def test_figure_with_several_images_gives_one_ref_each_sharing_the_caption():
    page = extract("""<figure><img src="a.jpg" alt="first"><img src="b.jpg" title="second">
             <figure><img src="inner.jpg"><figcaption>inner caption</figcaption></figure>
             <figcaption>outer caption</figcaption></figure>""")
    summary = [
        (ref.position, ref.image_url.rsplit("/", 1)[1], ref.alt, ref.title, ref.figcaption) for ref in page.media
    ]
    assert summary == [
        (0, "a.jpg", "first", None, "outer caption"),
        (1, "b.jpg", None, "second", "outer caption"),
        (2, "inner.jpg", None, None, "inner caption"),  # a nested figure keeps its own caption
    ]


def test_media_outside_figures_and_their_sources():
    page = extract("""<div><audio title=" Interview "><source src="data:audio/wav;base64,AAAA"><source src="talk.ogg">
                  <source src="talk.mp3"></audio>
             <a rel="transcript" href="/talk.txt">transcript</a></div>
           <video data-transcript="clip-words.txt"><source src="clip.mp4#t=10"></video>
           <img src="data:image/gif;base64,R0lGOD" data-src="lazy.jpg">
           <img src="javascript:void(0)">
           <audio></audio>""")
    assert [(r.position, r.image_url, r.audio_url, r.title, r.transcript_url) for r in page.media] == [
        (0, None, "https://example.com/articles/talk.ogg", "Interview", "https://example.com/talk.txt"),
        (1, None, "https://example.com/articles/clip.mp4", None, "https://example.com/articles/clip-words.txt"),
        (2, "https://example.com/articles/lazy.jpg", None, None, None),
    ]


@pytest.mark.parametrize(
    "img, expected",
    [
        ('<img srcset="s.jpg 320w, l.jpg 1280w, m.jpg 640w">', "l.jpg"),
        ('<img srcset="a.jpg, b.jpg 2x,c.jpg 1.5x">', "b.jpg"),
        ('<img srcset="x.jpg 3x, w.jpg 10w">', "w.jpg"),  # a width beats any density
        ('<img srcset="img,v2.jpg 2x, small.jpg">', "img,v2.jpg"),  # commas inside a URL
        ('<img src="src.jpg" srcset="big.jpg 2000w">', "src.jpg"),  # src wins when present
    ],
)
def test_srcset_largest_candidate_when_there_is_no_src(img, expected):
    assert extract(img).media[0].image_url == f"https://example.com/articles/{expected}"


def test_base_href_resolves_media_and_links_and_fragments_are_dropped():
    page = extract("""<head><base href="https://cdn.example.net/assets/"></head>
           <img src="photo.jpg#section"><a href="../about#team">about</a><a href="//other.org/x">x</a>""")
    assert page.media[0].image_url == "https://cdn.example.net/assets/photo.jpg"
    assert page.links == ["https://cdn.example.net/about", "https://other.org/x"]


def test_links_are_http_deduplicated_in_order_and_skip_nofollow():
    page = extract("""<a href="/b">b</a><a href="/a">a</a><a href="/b#again">b</a><a rel="nofollow" href="/paid">ad</a>
           <a rel="external NoFollow" href="/paid2">ad</a><a href="mailto:x@example.com">mail</a>
           <a href="javascript:go()">js</a><a href="ftp://example.com/f">ftp</a><a>no href</a>""")
    assert page.links == ["https://example.com/b", "https://example.com/a"]
    assert page.nofollow is False


@pytest.mark.parametrize("content", ["nofollow", "noindex, nofollow", "none"])
def test_meta_robots_nofollow_gives_no_links(content):
    page = extract(f'<meta name="robots" content="{content}"><a href="/x">x</a><img src="a.jpg">')
    assert (page.links, page.nofollow, len(page.media)) == ([], True, 1)


def test_meta_robots_noai_and_noimageai_are_reported_and_media_still_listed():
    page = extract('<meta name="Robots" content="index, NoAI"><img src="a.jpg">')
    assert (page.noai, page.noimageai, len(page.media)) == (True, False, 1)
    page = extract('<meta name="robots" content="noimageai"><img src="a.jpg">')
    assert (page.noai, page.noimageai) == (False, True)


def test_meta_aimed_at_our_user_agent_counts_only_when_we_say_who_we_are():
    html = '<meta name="mmcurate" content="noai"><meta name="otherbot" content="noimageai">'
    assert extract(html, user_agent_token="mmcurate").noai is True
    assert extract(html, user_agent_token="mmcurate").noimageai is False
    assert extract(html).noai is False


def test_title_whitespace_and_svg_titles():
    page = extract("<svg><title>icon</title></svg><title>\n  Cats \t and  dogs </title><title>second</title>")
    assert page.title == "Cats and dogs"
    assert extract("<title>   </title><p>x").title is None


def test_malformed_html_still_yields_what_it_can():
    page = extract(
        # unclosed head/div/p/b/figcaption, an unquoted attribute, stray end tags, no </html>
        '<html><head><title>Broken</title><body><div><p>text <b>bold <img src=a.jpg alt="a">'
        '<figure><img src="b.jpg"><figcaption>cap</figure> <a href="/next">next</td></tr></span>'
    )
    assert page.title == "Broken"
    assert [ref.image_url.rsplit("/", 1)[1] for ref in page.media] == ["a.jpg", "b.jpg"]
    assert page.media[1].figcaption == "cap"
    assert page.links == ["https://example.com/next"]


# ------------------------------------------------------------------------------------------------ decoding

LATIN1_PAGE = '<title>Café crème</title><img src="a.jpg" alt="Brûlée">'


def test_charset_from_the_content_type_header():
    page = extract_page(LATIN1_PAGE.encode("latin-1"), PAGE, "text/html; charset=ISO-8859-1")
    assert (page.title, page.media[0].alt) == ("Café crème", "Brûlée")


def test_charset_from_meta_when_the_header_has_none():
    body = ('<meta charset="windows-1252">' + LATIN1_PAGE).encode("cp1252")
    assert extract_page(body, PAGE, "text/html").title == "Café crème"
    body = ('<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">' + LATIN1_PAGE).encode("latin-1")
    assert extract_page(body, PAGE, None).title == "Café crème"


def test_header_charset_wins_over_meta_and_an_unknown_label_is_ignored():
    body = ('<meta charset="utf-8">' + LATIN1_PAGE).encode("latin-1")
    assert extract_page(body, PAGE, 'text/html; charset="latin1"').title == "Café crème"
    assert extract_page(body.replace(b"utf-8", b"latin1"), PAGE, "text/html; charset=x-nonsense").title == (
        "Café crème"
    )


def test_undeclared_non_utf8_is_rejected():
    with pytest.raises(Rejected) as caught:
        extract_page(LATIN1_PAGE.encode("latin-1"), PAGE, "text/html")
    assert caught.value.reason == Reason.NOT_UTF8.value and "utf-8" in caught.value.detail


def test_declared_charset_that_does_not_fit_the_bytes_is_rejected():
    with pytest.raises(Rejected) as caught:
        extract_page(LATIN1_PAGE.encode("latin-1"), PAGE, "text/html; charset=utf-8")
    assert caught.value.reason == Reason.NOT_UTF8.value


def test_utf16_with_byte_order_mark():
    body = "\ufeff<title>Ünïcode</title>".encode("utf-16-le")
    assert extract_page(body, PAGE, "text/html").title == "Ünïcode"


@pytest.mark.parametrize(
    "body",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
        bytes(range(256)) * 4,
        b"",
        b" \n\t ",
    ],
)
def test_bytes_that_are_not_html_are_malformed(body):
    with pytest.raises(Rejected) as caught:
        extract_page(body, PAGE, "text/html")
    assert caught.value.reason == Reason.HTML_MALFORMED.value


def test_plain_text_is_not_an_error_just_empty():
    page = extract("just some words, no markup at all")
    assert (page.title, page.media, page.links) == (None, [], [])


# ------------------------------------------------------------------------------------------------ bounded work


@pytest.mark.timeout(60)  # the tree-walking extractor was quadratic: 8 s at 5,000 nested figures, 35 s at 10,000
def test_deeply_nested_figures_are_extracted_in_linear_time():
    depth = 30_000
    page = extract("<figure><img src='a.jpg'><figcaption>c</figcaption>" * depth + "</figure>" * depth)
    assert len(page.media) == depth and {ref.figcaption for ref in page.media} == {"c"}


@pytest.mark.timeout(60)  # each image of a figure rebuilt the list of all its images: quadratic in their number
def test_a_figure_with_very_many_images_is_extracted_in_linear_time():
    page = extract("<figure><figcaption>shared</figcaption>" + "<img src='a.jpg'>" * 30_000 + "</figure>")
    assert len(page.media) == 30_000 and page.media[-1].figcaption == "shared"


@pytest.mark.timeout(60)  # html.parser's close() rescans an unfinished tag once per character: days at 2 MB
def test_an_unfinished_tag_running_to_the_end_of_the_page_is_dropped_in_linear_time():
    page = extract('<title>t</title><img src="a.jpg">' + "<a" * 1_000_000)
    assert (page.title, len(page.media), page.links) == ("t", 1, [])


def test_text_left_at_the_end_is_text_and_an_unfinished_tag_is_dropped():
    assert extract("<title>fish &amp chips &am").title == "fish & chips &am"
    assert extract("<title>fish <b").title == "fish"


def test_a_page_past_the_element_budget_is_too_complex():
    html = "<div>" * 101
    assert len(extract(html, max_elements=101).media) == 0
    with pytest.raises(Rejected) as caught:
        extract(html, max_elements=100)
    assert caught.value.reason == Reason.HTML_TOO_COMPLEX.value and "more than 100 elements" in caught.value.detail


def test_a_page_past_the_time_budget_is_too_complex():
    with pytest.raises(Rejected) as caught:
        extract("<p>x</p>" * 5000, time_budget_s=0)  # the clock is read every 1024 tokens
    assert caught.value.reason == Reason.HTML_TOO_COMPLEX.value and "not parsed within 0 s" in caught.value.detail


def test_captions_and_titles_keep_their_first_characters():
    page = extract("<title>" + "t" * 10_000 + "</title><figure><img src=a.jpg><figcaption>"
                   + "word " * 5_000 + "</figcaption></figure>")  # fmt: skip
    assert page.title == "t" * MAX_CAPTURE_CHARS
    assert page.media[0].figcaption.startswith("word word") and len(page.media[0].figcaption) <= MAX_CAPTURE_CHARS


def test_a_title_left_open_collects_text_from_figcaptions_too():
    page = extract("<title>Page <figure><img src=a.jpg><figcaption>cap</figcaption></figure> end")
    assert (page.title, page.media[0].figcaption) == ("Page cap end", "cap")


def test_source_and_track_belong_to_the_innermost_media_element():
    page = extract('<video><source src="v.mp4"><audio><source src="a.ogg"><track src="a.vtt"></audio></video>')
    assert [(ref.audio_url.rsplit("/", 1)[1], len(ref.tracks)) for ref in page.media] == [("v.mp4", 0), ("a.ogg", 1)]


def test_markup_the_tokenizer_cannot_read_is_malformed():
    with pytest.raises(Rejected) as caught:
        extract("<p>text</p><![<![ x")
    assert caught.value.reason == Reason.HTML_MALFORMED.value
