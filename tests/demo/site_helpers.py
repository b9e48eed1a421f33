"""Reading a built demo site the way a crawler would (imported as ``site_helpers``: pytest puts this folder on
sys.path), shared by the demo tests."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from mmcurate.pipeline.demo.site.labels import BASE_URL_TOKEN


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class _Refs(HTMLParser):
    """Collects <a href> links and media references (img src/srcset, audio/source src, track src)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.media: list[str] = []
        self.alts: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "audio", "source", "track") and a.get("src"):
            self.media.append(a["src"])
        if tag == "img":
            self.alts.append(a.get("alt"))
            for candidate in (a.get("srcset") or "").split(","):
                if candidate.strip():
                    self.media.append(candidate.split()[0])


def resolve(page: str, ref: str) -> str:
    """A reference as written on ``page`` → root-relative path (or the absolute off-site URL)."""
    if ref.startswith(BASE_URL_TOKEN):
        return ref[len(BASE_URL_TOKEN) :]
    if ref.startswith(("http://", "https://")):
        return ref
    if ref.startswith("/"):
        return ref
    return posixpath.normpath(posixpath.join(posixpath.dirname(page), ref))


def parse_page(site: Path, page: str) -> _Refs:
    raw = (site / page.lstrip("/")).read_bytes()
    parser = _Refs()
    parser.feed(raw.decode("utf-8") if b'charset="utf-8"' in raw else raw.decode("latin-1"))
    return parser


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))  # whole words: "centred" does not say "red"
