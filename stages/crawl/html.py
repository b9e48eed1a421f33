"""From an HTML page to the media on it (with the text that describes each) and the links to crawl next.

Decoding: byte-order mark, else the charset of the Content-Type header, else ``<meta charset>`` /
``<meta http-equiv="Content-Type">`` in the first 1024 bytes, else UTF-8; bytes that do not decode in that
charset are NOT_UTF8 (no guessing: a wrong guess makes mojibake captions). Bytes that are not text at all (NUL
or many control bytes: an image served as text/html) are HTML_MALFORMED. Merely broken markup (unclosed tags)
is parsed leniently by the stdlib tokenizer and yields what it can.

Cost: one pass, linear in the page's size (``html_scan.py``), within an element and a time budget; a page past
either is HTML_TOO_COMPLEX. Titles and figcaptions keep their first ``MAX_CAPTURE_CHARS`` characters.

Grouping: a ``<figure>`` with at most one image and at most one audio/video becomes ONE ``MediaRef`` (a figure
with its narration) carrying the figcaption; a figure with more media gives each its own ref, all with the
figcaption. Media outside figures are one ref each.

Transcripts (``MediaRef.transcript_url``), first found wins:
  1. a ``data-transcript="URL"`` attribute on the ``<audio>``/``<video>`` element;
  2. an ``<a rel="transcript" href>`` inside the media's ``<figure>``, or, outside figures, inside the media
     element's parent element.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin, urlsplit

from mmcurate.schemas.reasons import Reason, Rejected
from mmcurate.stages.crawl.html_scan import Element, Found, Scan, scan
from mmcurate.stages.crawl.optout import meta_robots

MAX_ELEMENTS = 1_000_000  # start tags in one page; dense real pages carry ~25 per KB, so 40 MB of them
TIME_BUDGET_S = 120.0  # the stdlib tokenizer reads ~2 MB/s on a loaded small machine: a 20 MB page fits
_TRACK_KINDS = ("captions", "subtitles")
_META_SNIFF_BYTES = 1024  # the HTML standard's pre-scan window for <meta charset>
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
# Bytes that never occur in text; a few stray ones are tolerated (old pages carry form feeds, ESC, …).
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_MAX_CONTROL_FRACTION = 0.01


@dataclass(frozen=True)
class Track:
    kind: str  # "captions" | "subtitles"
    srclang: str | None
    url: str


@dataclass
class MediaRef:
    page_url: str
    position: int  # order on the page, 0-based: with page_url a stable key for the sample
    image_url: str | None = None
    audio_url: str | None = None
    alt: str | None = None
    title: str | None = None
    figcaption: str | None = None
    tracks: list[Track] = field(default_factory=list)
    transcript_url: str | None = None


@dataclass
class PageExtract:
    title: str | None
    media: list[MediaRef]
    links: list[str]  # http(s), fragment-free, deduplicated, document order; [] under meta robots nofollow
    # From <meta name="robots"> (and <meta name="{user_agent_token}">): the crawler decides what to refuse.
    noai: bool = False  # no AI use of anything on the page
    noimageai: bool = False  # no AI use of the page's images
    nofollow: bool = False


# ---------------------------------------------------------------------------------------------- decoding


def _charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip(" \"'"):
            return value.strip(" \"'")
    return None


def _known_codec(label: str | None) -> str | None:
    """Python's name for a charset label, or None when unknown or not a text encoding ("base64", "rot13")."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip()).name
        b"".decode(name)  # bytes-to-bytes codecs are found by lookup but refuse to decode to str
    except LookupError:
        return None
    return name


def decode_html(body: bytes, content_type: str | None) -> str:
    """Bytes to text, by the rules in the module docstring."""
    if not body.strip():
        raise Rejected(Reason.HTML_MALFORMED, "empty body")
    for bom, codec in _BOMS:
        if body.startswith(bom):
            try:
                return body[len(bom) :].decode(codec)
            except UnicodeDecodeError as err:
                raise Rejected(Reason.NOT_UTF8, f"not valid {codec} after its byte-order mark: {err}") from None
    declared = _known_codec(_charset_from_content_type(content_type))
    if declared is None:
        sniffed = _META_CHARSET.search(body[:_META_SNIFF_BYTES])
        declared = _known_codec(sniffed.group(1).decode("ascii")) if sniffed else None
    codec = declared or "utf-8"
    if not codec.startswith(("utf-16", "utf-32")):  # the only text encodings full of NUL bytes
        sample = body[:65536]
        if b"\x00" in sample or len(_CONTROL_BYTES.findall(sample)) > _MAX_CONTROL_FRACTION * len(sample):
            raise Rejected(Reason.HTML_MALFORMED, "binary content, not HTML")
    try:
        return body.decode(codec)
    except UnicodeDecodeError as err:
        source = "declared" if declared else "assumed (nothing declared)"
        raise Rejected(Reason.NOT_UTF8, f"not valid {codec}, {source}: {err}") from None


# ---------------------------------------------------------------------------------------------- helpers


def _text(value: str | None) -> str | None:
    """Collapse whitespace; empty is None (an empty alt says "decorative", not "caption is ''")."""
    if value is None:
        return None
    collapsed = " ".join(value.split())
    return collapsed or None


def _resolve(base_url: str, raw: str | None) -> str | None:
    """Absolute http(s) URL without fragment, or None (data:, javascript:, mailto:, empty)."""
    if raw is None:
        return None
    raw = re.sub(r"[\t\n\r]", "", raw).strip()  # browsers drop these anywhere in a URL attribute
    if not raw:
        return None
    try:
        absolute = urldefrag(urljoin(base_url, raw)).url
        parts = urlsplit(absolute)
    except ValueError:  # "http://[::1" and friends
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return absolute


def _srcset_candidates(srcset: str) -> list[tuple[str, str]]:
    """(url, descriptors) pairs, following the HTML standard's srcset parsing: a URL is a run of non-space
    characters (it may contain commas), trailing commas end it; descriptors run to the next comma."""
    candidates = []
    position, end = 0, len(srcset)
    while True:
        while position < end and (srcset[position].isspace() or srcset[position] == ","):
            position += 1
        if position >= end:
            return candidates
        start = position
        while position < end and not srcset[position].isspace():
            position += 1
        url, descriptors = srcset[start:position], ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = position
            while position < end and srcset[position] != ",":
                position += 1
            descriptors = srcset[start:position].strip()
        if url:
            candidates.append((url, descriptors))


def _largest_srcset_candidate(srcset: str) -> str | None:
    """The candidate with the largest width ("800w"), else the largest density ("2x"); plain URLs count as 1x."""
    best: tuple[int, float] | None = None  # (has a width, size): any width beats any density
    best_url = None
    for url, descriptors in _srcset_candidates(srcset):
        width = re.fullmatch(r"(\d+)w", descriptors)
        density = re.fullmatch(r"(\d+(?:\.\d+)?)x", descriptors)
        key = (1, float(width.group(1))) if width else (0, float(density.group(1)) if density else 1.0)
        if best is None or key > best:
            best, best_url = key, url
    return best_url


# ---------------------------------------------------------------------------------------------- media


def _image_url(attrs: dict[str, str], base_url: str) -> str | None:
    # src first; a data: placeholder (lazy loading) falls through to srcset, then data-src.
    for candidate in (attrs.get("src"), _largest_srcset_candidate(attrs.get("srcset", "")), attrs.get("data-src")):
        url = _resolve(base_url, candidate)
        if url:
            return url
    return None


def _audio_url(found: Found, base_url: str) -> str | None:
    # the element's src, else the first playable <source>: the one a browser would pick
    for candidate in (found.attrs.get("src"), *found.sources):
        url = _resolve(base_url, candidate)
        if url:
            return url
    return None


def _tracks(found: Found, base_url: str) -> list[Track]:
    tracks = []
    for attrs in found.tracks:
        kind = (attrs.get("kind") or "subtitles").strip().lower()  # missing kind means subtitles
        url = _resolve(base_url, attrs.get("src"))
        if kind in _TRACK_KINDS and url:
            tracks.append(Track(kind=kind, srclang=_text(attrs.get("srclang")), url=url))
    return tracks


def _transcript_in(element: Element, base_url: str) -> str | None:
    return _resolve(base_url, element.transcript) if isinstance(element.transcript, str) else None


@dataclass
class _Located:
    found: Found
    image_url: str | None = None
    audio_url: str | None = None


def _locate(found: list[Found], base_url: str) -> list[_Located]:
    located = []
    for item in found:
        if item.kind == "image":
            image_url = _image_url(item.attrs, base_url)
            if image_url:
                located.append(_Located(item, image_url=image_url))
        else:
            audio_url = _audio_url(item, base_url)
            if audio_url:
                located.append(_Located(item, audio_url=audio_url))
    return located


def _media_refs(found: list[Found], page_url: str, base_url: str) -> list[MediaRef]:
    located = _locate(found, base_url)
    by_figure: dict[Element, list[_Located]] = {}
    for item in located:
        if item.found.figure is not None:
            by_figure.setdefault(item.found.figure, []).append(item)

    # a figure with at most one image and one audio is one sample; decided once per figure, not per member
    grouped = {
        figure
        for figure, items in by_figure.items()
        if sum(1 for i in items if i.image_url) <= 1 and sum(1 for i in items if i.audio_url) <= 1
    }
    refs: list[MediaRef] = []
    for item in located:
        figure = item.found.figure
        if figure in grouped:
            members = by_figure[figure]
            if item is not members[0]:
                continue  # folded into the ref its figure's first member made
        else:
            members = [item]
        refs.append(_ref_from(members, figure, page_url, base_url, position=len(refs)))
    return refs


def _ref_from(members: list[_Located], figure: Element | None, page_url: str, base_url: str, position: int) -> MediaRef:
    ref = MediaRef(page_url=page_url, position=position)
    ref.figcaption = _text(figure.caption.text()) if figure is not None and figure.caption is not None else None
    for member in members:
        attrs = member.found.attrs
        if member.image_url:
            ref.image_url = member.image_url
            ref.alt = _text(attrs.get("alt"))
        else:
            ref.audio_url = member.audio_url
            ref.tracks = _tracks(member.found, base_url)
            ref.transcript_url = ref.transcript_url or _resolve(base_url, attrs.get("data-transcript"))
        ref.title = ref.title or _text(attrs.get("title"))
    if ref.audio_url and ref.transcript_url is None:
        ref.transcript_url = _transcript_in(figure if figure is not None else members[0].found.parent, base_url)
    return ref


# ---------------------------------------------------------------------------------------------- page


def _links(page: Scan, base_url: str) -> list[str]:
    links: dict[str, None] = {}  # ordered set
    for href, rel in page.anchors:
        if "nofollow" in rel:
            continue
        url = _resolve(base_url, href)
        if url:
            links.setdefault(url, None)
    return list(links)


def extract_page(
    body: bytes,
    page_url: str,
    content_type: str | None,
    user_agent_token: str | None = None,
    *,
    max_elements: int = MAX_ELEMENTS,
    time_budget_s: float = TIME_BUDGET_S,
) -> PageExtract:
    """Parse one fetched page. Raises ``Rejected`` (NOT_UTF8, HTML_MALFORMED, HTML_TOO_COMPLEX) when the bytes
    are not usable.

    ``user_agent_token`` also honours ``<meta name="mmcurate" content="noai">`` aimed at us by name.
    """
    page = scan(decode_html(body, content_type), max_elements, time_budget_s)
    base_url = page_url
    if page.base_href is not None:
        base_url = _resolve(page_url, page.base_href) or page_url
    directives = meta_robots(page.metas, user_agent_token)
    return PageExtract(
        title=_text(page.title.text()) if page.title is not None else None,
        media=_media_refs(page.found, page_url, base_url),
        links=[] if directives.nofollow else _links(page, base_url),
        noai=directives.noai,
        noimageai=directives.noimageai,
        nofollow=directives.nofollow,
    )
