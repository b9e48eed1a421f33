"""One pass over a page's markup, collecting what extraction needs, in time linear in the page's size.

The stdlib tokenizer (``html.parser``) feeds a stack of open elements, built the way BeautifulSoup's html.parser
builder builds its tree: void elements are never opened, an end tag closes the most recent open element of that
name and everything opened after it, an end tag with no open element of its name is ignored. Every question the
extractor asks ("which figure is this image in?", "which figcaption is this figure's?", "is there a transcript
link in this element?") is answered at the moment the tokenizer passes, in O(1) amortised work per token:

  * the innermost open ``<figure>`` and ``<audio>``/``<video>`` are the tops of their own stacks;
  * a transcript link sets "first transcript link" on every open element that has none yet, walking down from
    the top and stopping at the first that has one (its ancestors have one too), so each element is set once;
  * text goes to the innermost open capture (the first figcaption of a figure) and to the page title while that
    is open — not to every enclosing figcaption, which would cost O(depth) per string — and each capture keeps
    at most ``MAX_CAPTURE_CHARS`` characters;
  * a ``<source>`` or ``<track>`` belongs to the innermost open ``<audio>``/``<video>`` (media nested in media is
    fallback content, not more sources of the outer one).

Budgets, both HTML_TOO_COMPLEX: ``max_elements`` start tags (deterministic), and a wall-clock ``deadline`` as the
last resort against the tokenizer itself (CPython's ``html.parser`` has had super-linear paths on malformed input,
e.g. CVE-2025-6069). The known quadratic path is in ``close()``'s handling of an unfinished construct at the end;
``scan`` never calls ``close()`` and treats the end of the page the way HTML5 does: text left over is text, an
unfinished tag is dropped, an unfinished comment or ``<script>`` runs to the end.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser

from mmcurate.schemas.reasons import Reason, Rejected

MAX_CAPTURE_CHARS = 4096  # of a title or figcaption; longer is not a caption
_VOID = frozenset(
    "area base basefont bgsound br col command embed frame hr image img input isindex keygen link menuitem meta "
    "nextid param source spacer track wbr".split()
)  # BeautifulSoup's empty-element tags: never opened, so never closed
_MEDIA = ("audio", "video")  # a video's soundtrack is audio for audio-text pairs
_RAW_TEXT = ("script", "style")  # their text is code, not captions
_UNSET = object()


@dataclass(eq=False)
class Capture:
    pieces: list[str] = field(default_factory=list)
    size: int = 0
    open: bool = True

    def add(self, data: str) -> None:
        if self.size < MAX_CAPTURE_CHARS:
            self.pieces.append(data[: MAX_CAPTURE_CHARS - self.size])
            self.size += len(self.pieces[-1])

    def text(self) -> str:
        # BeautifulSoup's get_text(" "): every string, separated by a space
        return " ".join(self.pieces)[:MAX_CAPTURE_CHARS]


@dataclass(eq=False)
class Element:
    tag: str
    transcript: object = _UNSET  # raw href of the first <a rel="transcript"> inside, once one was seen
    caption: Capture | None = None  # a <figure>'s first own figcaption
    capture: Capture | None = None  # the capture this element feeds (a title, a chosen figcaption)
    media: Found | None = None  # an <audio>/<video>'s record


@dataclass(eq=False)
class Found:
    """An <img>, <audio> or <video>, with its attributes as written (resolved against <base> later)."""

    kind: str  # "image" | "audio"
    attrs: dict[str, str]
    figure: Element | None  # the innermost open figure when the element started
    parent: Element  # the element it started in
    sources: list[str] = field(default_factory=list)  # <source src> inside an audio/video, in order
    tracks: list[dict[str, str]] = field(default_factory=list)  # <track> attributes inside an audio/video


@dataclass(eq=False)
class Scan:
    found: list[Found] = field(default_factory=list)  # document order of their start tags
    anchors: list[tuple[str, list[str]]] = field(default_factory=list)  # (href as written, rel tokens lower-cased)
    metas: list[tuple[str, str]] = field(default_factory=list)  # (name, content) of every <meta>
    base_href: str | None = None  # the first <base href>
    title: Capture | None = None  # the first <title> outside <svg>


class _Scanner(HTMLParser):
    def __init__(self, max_elements: int, deadline: float, time_budget_s: float):
        super().__init__(convert_charrefs=True)
        self.max_elements, self.deadline, self.time_budget_s = max_elements, deadline, time_budget_s
        self.scan = Scan()
        self.stack = [Element("#document")]
        self.open_names: Counter[str] = Counter()
        self.figures: list[Element] = []
        self.media: list[Found] = []
        self.captures: list[Capture] = []
        self.elements = self.tokens = 0

    def _tick(self) -> None:
        self.tokens += 1
        if self.tokens % 1024 == 0 and time.monotonic() > self.deadline:
            raise Rejected(Reason.HTML_TOO_COMPLEX, f"not parsed within {self.time_budget_s:g} s")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tick()
        self.elements += 1
        if self.elements > self.max_elements:
            raise Rejected(Reason.HTML_TOO_COMPLEX, f"more than {self.max_elements} elements")
        values = {name: value or "" for name, value in attrs}  # BeautifulSoup's reading of a bare attribute
        parent = self.stack[-1]
        figure = self.figures[-1] if self.figures else None
        if tag == "img":
            self.scan.found.append(Found("image", values, figure, parent))
        elif tag == "source" and self.media:
            self.media[-1].sources.append(values.get("src", ""))
        elif tag == "track" and self.media:
            self.media[-1].tracks.append(values)
        elif tag == "meta":
            self.scan.metas.append((values.get("name", ""), values.get("content", "")))
        elif tag == "base" and "href" in values and self.scan.base_href is None:
            self.scan.base_href = values["href"]
        elif tag == "a" and "href" in values:
            rel = values.get("rel", "").lower().split()
            self.scan.anchors.append((values["href"], rel))
            if "transcript" in rel:
                for element in reversed(self.stack):
                    if element.transcript is not _UNSET:
                        break
                    element.transcript = values["href"]
        if tag in _VOID:
            return
        element = Element(tag)
        if tag == "figure":
            self.figures.append(element)
        elif tag in _MEDIA:
            element.media = Found("audio", values, figure, parent)
            self.scan.found.append(element.media)
            self.media.append(element.media)
        elif tag == "figcaption" and figure is not None and figure.caption is None:
            element.capture = figure.caption = Capture()
        elif tag == "title" and self.scan.title is None and not self.open_names["svg"]:
            element.capture = self.scan.title = Capture()
        if element.capture is not None:
            self.captures.append(element.capture)
        self.stack.append(element)
        self.open_names[tag] += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:  # "<div/>" is an empty div
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        self._tick()
        if not self.open_names[tag]:
            return
        while True:
            element = self.stack.pop()
            self.open_names[element.tag] -= 1
            if element.tag == "figure":
                self.figures.pop()
            elif element.media is not None:
                self.media.pop()
            if element.capture is not None:
                self.captures.pop().open = False
            if element.tag == tag:
                return

    def handle_data(self, data: str) -> None:
        self._tick()
        if not self.captures or self.stack[-1].tag in _RAW_TEXT:
            return
        # a title and a figcaption inside one another (an unclosed <title> swallows the page) both get the text
        innermost, title = self.captures[-1], self.scan.title
        innermost.add(data)
        if title is not None and title is not innermost and title.open:
            title.add(data)
        if innermost is title and len(self.captures) > 1:
            self.captures[-2].add(data)

    def finish(self) -> Scan:
        left = self.rawdata
        if left and not left.startswith("<") and self.cdata_elem is None:
            self.handle_data(unescape(left))  # text held back in case it ended in half a character reference
        return self.scan


def scan(text: str, max_elements: int, time_budget_s: float) -> Scan:
    """Raises Rejected: HTML_TOO_COMPLEX past a budget, HTML_MALFORMED where the tokenizer gives up."""
    scanner = _Scanner(max_elements, time.monotonic() + time_budget_s, time_budget_s)
    try:
        scanner.feed(text)
    except AssertionError as err:  # _markupbase's reaction to some declarations ("<![if" without a name)
        raise Rejected(Reason.HTML_MALFORMED, f"{type(err).__name__}: {err}") from None
    return scanner.finish()
