"""Page structure (index → section listings → articles; audio pages; a robots-blocked page) and HTML rendering.

Links and media are written in three styles, so a crawler must resolve all of them: relative to the page
(``../images/x.jpg``), root-relative (``/images/x.jpg``) and absolute (``{{BASE_URL}}/images/x.jpg``, which the
demo server rewrites to its own base URL).
"""

from __future__ import annotations

import html
import posixpath
import random
from dataclasses import dataclass, field

from mmcurate.pipeline.demo.site.assets import AssetRef, Block
from mmcurate.pipeline.demo.site.labels import BASE_URL_TOKEN

WORDS = (
    "morning market river walk harbour street window garden letter travel evening station notes archive museum "
    "visit weekend library village coast season journey bakery festival lantern ferry bridge orchard quiet "
    "hillside workshop postcard story notebook afternoon ticket canal chapel meadow album sketch"
).split()
LATIN1_TEXT = (
    "Notes from the café on the square: the façade was repainted this spring, the crème brûlée is still "
    "excellent, and Señor Muñoz says the garçon will return après the holidays."
)


@dataclass
class Page:
    path: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # navigation: (target path, anchor text)
    listing: list[tuple[str, str]] = field(default_factory=list)  # a section's articles, as a <ul>
    paragraphs: list[str] = field(default_factory=list)
    encoding: str = "utf-8"  # "latin-1": written as Latin-1 bytes with no charset declared anywhere

    def place(self, block: Block) -> None:
        for ref in block.refs:
            ref.page = self.path
        self.blocks.append(block)


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randrange(6, 14))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randrange(2, 5)))


def title(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 4))).title()


def href(target: str, page_path: str, rng: random.Random) -> str:
    """``target`` (root-relative, or an absolute off-site URL) written the way this reference happens to be."""
    if not target.startswith("/"):
        return target
    style = rng.random()
    if style < 0.4:
        return posixpath.relpath(target, posixpath.dirname(page_path))
    if style < 0.8:
        return target
    return BASE_URL_TOKEN + target


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _img(ref: AssetRef, page: Page, rng: random.Random, *, alt: str | None, srcset: AssetRef | None = None) -> str:
    parts = [f'<img src="{_attr(href(ref.url, page.path, rng))}"']
    if srcset is not None:
        parts.append(
            f' srcset="{_attr(href(ref.url, page.path, rng))} 1x, {_attr(href(srcset.url, page.path, rng))} 2x"'
        )
    if alt is not None:
        parts.append(f' alt="{_attr(alt)}"')
    if ref.title_text is not None:
        parts.append(f' title="{_attr(ref.title_text)}"')
    if ref.width and ref.height and ref.width <= 512:
        parts.append(f' width="{ref.width}" height="{ref.height}"')
    return "".join(parts) + ">"


def _audio(ref: AssetRef, page: Page, rng: random.Random) -> str:
    # two valid ways to name the media: the src attribute, or a <source> child (used here for WAV)
    if ref.media_format == "wav":
        lines = [
            '<audio controls preload="none">',
            f'  <source src="{_attr(href(ref.url, page.path, rng))}" type="audio/wav">',
        ]
    else:
        lines = [f'<audio controls preload="none" src="{_attr(href(ref.url, page.path, rng))}">']
    if ref.subtitle_url:
        kind = "captions" if ref.subtitle_format == "vtt" else "subtitles"
        lines.append(
            f'  <track kind="{kind}" src="{_attr(href(ref.subtitle_url, page.path, rng))}" '
            'srclang="en" label="English" default>'
        )
    lines.append("</audio>")
    if ref.subtitle_format == "srt":
        lines.append(f'<p><a href="{_attr(href(ref.subtitle_url, page.path, rng))}">Subtitles (SRT)</a></p>')
    return "\n".join(lines)


def render_block(block: Block, page: Page, rng: random.Random) -> str:
    if block.markup == "img":
        (ref,) = block.refs
        return f"<p>{_img(ref, page, rng, alt=ref.shown_text)}</p>"
    if block.markup == "figure":
        (ref,) = block.refs
        alt = rng.choice(("", ref.shown_text or ""))  # figures often leave alt empty: the figcaption speaks
        return (
            f"<figure>\n{_img(ref, page, rng, alt=alt)}\n"
            f"<figcaption>{html.escape(ref.shown_text or '')}</figcaption>\n</figure>"
        )
    if block.markup == "srcset":
        src, big = block.refs
        return f"<p>{_img(src, page, rng, alt=src.shown_text, srcset=big)}</p>"
    if block.markup == "audio":
        (ref,) = block.refs
        heading = f"<h2>{html.escape(block.heading)}</h2>\n" if block.heading else ""
        return (
            f'<section class="clip">\n{heading}{_audio(ref, page, rng)}\n'
            f'<p class="description">{html.escape(ref.shown_text or "")}</p>\n</section>'
        )
    if block.markup == "figure_audio":
        image, narration = block.refs
        return (
            f'<figure id="{_attr(image.figure_id or "")}">\n{_img(image, page, rng, alt="")}\n'
            f"{_audio(narration, page, rng)}\n<figcaption>{html.escape(image.shown_text or '')}</figcaption>\n"
            "</figure>"
        )
    raise ValueError(f"unknown block markup {block.markup!r}")


def render(page: Page, seed: int) -> bytes:
    # a per-page RNG (str seeds hash with SHA-512: stable across processes) keeps rendering choices independent
    # of the order pages are written in
    rng = random.Random(f"{seed}:{page.path}")
    head = ["<!DOCTYPE html>", '<html lang="en">', "<head>"]
    if page.encoding == "utf-8":
        head.append('<meta charset="utf-8">')
    head += [f"<title>{html.escape(page.title)}</title>", "</head>", "<body>"]
    body: list[str] = []
    if page.links:
        nav = " | ".join(
            f'<a href="{_attr(href(target, page.path, rng))}">{html.escape(text)}</a>' for target, text in page.links
        )
        body.append(f"<nav>{nav}</nav>")
    body.append(f"<h1>{html.escape(page.title)}</h1>")
    if page.listing:
        items = "\n".join(
            f'<li><a href="{_attr(href(target, page.path, rng))}">{html.escape(text)}</a></li>'
            for target, text in page.listing
        )
        body.append(f"<ul>\n{items}\n</ul>")
    paragraphs = list(page.paragraphs)
    for block in page.blocks:
        if paragraphs:
            body.append(f"<p>{html.escape(paragraphs.pop(0))}</p>")
        body.append(render_block(block, page, rng))
    body += [f"<p>{html.escape(p)}</p>" for p in paragraphs]
    text = "\n".join(head + body + ["</body>", "</html>", ""])
    return text.encode(page.encoding)
