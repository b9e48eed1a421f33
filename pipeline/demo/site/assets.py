"""Planning the demo site's asset references: what each ``<img>``/``<audio>`` points at, what the page says
about it, what it really is, and its ground-truth label. Pure planning plus media bytes; no file is written here.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from mmcurate.pipeline.demo.site import audio, images
from mmcurate.pipeline.demo.site.labels import (
    ERROR_PREFIX,
    HUGE_PREFIX,
    LOOP_PREFIX,
    NOT_ALLOWED_URL,
    ROBOTS_DISALLOWED_PREFIX,
    SLOW_PREFIX,
    TRUSTED_PREFIX,
    Label,
)

JUNK_TEXTS = ("click here", "image", "IMG_2031.jpg", "", "photo", "thumbnail", "DSC00417.JPG", "untitled", None)
IMAGE_DIRS = ("/images/", "/static/img/", "/uploads/2023/", "/uploads/2024/", "/media/pictures/")
NEAR_DUPLICATE_VARIANTS = ("resize", "reencode", "crop", "to_png")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "flac": "flac", "wav": "wav"}


@dataclass
class AssetRef:
    """One reference from one page to one media URL, with everything the ground truth records about it."""

    url: str  # root-relative path ("/images/x.jpg") or, for off-site references, an absolute URL
    kind: str  # "image" | "audio"
    label: Label
    markup: str  # "img" | "figure" | "srcset" | "audio" | "figure_audio": how the page presents it; "list": no page
    shown_text: str | None  # the alt / figcaption / description the page gives (None: no alt attribute at all)
    true_caption: str | None  # what the media really shows or says (None: there is nothing to describe)
    body: bytes | None = None  # bytes written at site/<url>; None: the URL is served dynamically or not at all
    page: str = ""  # filled in when the reference is placed on a page; "" for a trusted reference (on none)
    title_text: str | None = None
    duplicate_of: str | None = None
    real_photo: bool = False
    shape: str | None = None
    colour: str | None = None
    background: str | None = None
    width: int | None = None
    height: int | None = None
    media_format: str | None = None
    expected_status: int | None = 200  # what the demo server answers (None: no answer: stall or never fetched)
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (site/_headers.json)
    figure_id: str | None = None
    subtitle_url: str | None = None
    subtitle_format: str | None = None
    subtitle_body: bytes | None = None
    cues: tuple[audio.Cue, ...] = ()
    in_url_list: bool = False
    trusted: bool = False  # in the trusted section (trusted_list.csv), which no page links to


@dataclass
class Block:
    """What a page shows in one place: ``refs`` is [image], [src, 2x candidate], [audio] or [image, audio]."""

    markup: str
    refs: list[AssetRef]
    heading: str | None = None


class Namer:
    """Neutral, unique file names (``img_3f2a9c01.jpg``): a name never gives the label away."""

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._used: set[str] = set()

    def __call__(self, directory: str, ext: str, stem: str = "img") -> str:
        while True:
            url = f"{directory}{stem}_{self._rng.getrandbits(32):08x}.{ext}"
            if url not in self._used:
                self._used.add(url)
                return url


def describe(scene: images.Scene, rng: random.Random) -> str:
    """A correct caption for ``scene``, worded like people word captions (not only "a red circle")."""
    a = images.article(scene.colour)
    return rng.choice(
        (
            f"{a} {scene.colour} {scene.shape}",
            f"{a.capitalize()} {scene.colour} {scene.shape} on a {scene.background} background",
            f"{scene.colour.capitalize()} {scene.shape}",
            f"Photo of {a} {scene.colour} {scene.shape}",
            f"Illustration: {a} {scene.colour} {scene.shape} against {scene.background}",
            f"The {scene.shape} in this picture is {scene.colour}.",
            f"{a.capitalize()} {scene.colour} {scene.shape}, centred",
        )
    )


class ImagePlanner:
    """Makes image references. Every method returns finished ``AssetRef``s with bytes and ground truth."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.name = Namer(rng)

    def _synthetic(
        self,
        label: Label,
        scene: images.Scene | None = None,
        directory: str | None = None,
        fmt: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> AssetRef:
        rng = self.rng
        scene = scene or images.random_scene(rng)
        fmt = fmt or rng.choice(("jpeg", "jpeg", "jpeg", "png", "png"))
        size = size or images.random_size(rng, images.PNG_MAX_SIDE if fmt == "png" else 512)
        body = images.encode(images.render_scene(scene, size), fmt)
        return AssetRef(
            url=self.name(directory or rng.choice(IMAGE_DIRS), EXTENSIONS[fmt]),
            kind="image",
            label=label,
            markup="img",
            shown_text=describe(scene, rng),
            true_caption=scene.caption,
            body=body,
            shape=scene.shape,
            colour=scene.colour,
            background=scene.background,
            width=size[0],
            height=size[1],
            media_format=fmt,
        )

    def clean(self, scene: images.Scene | None = None) -> AssetRef:
        return self._synthetic(Label.CLEAN, scene)

    def trusted(self, scene: images.Scene) -> AssetRef:
        """A clean synthetic under /trusted/, known only from the trusted list: what a curated source offers."""
        ref = self._synthetic(Label.CLEAN, scene, directory=TRUSTED_PREFIX)
        ref.markup, ref.trusted = "list", True
        return ref

    def trusted_photo_view(self, name: str) -> AssetRef:
        """Another view of one of the site's photos for the trusted list: a crop of 55-80 % per side (too far from
        the pool's photo to be its near-duplicate), mirrored half the time, at most 256 px, the site's caption."""
        body, caption, _ = images.photo(name)
        image = images.decode(body)
        fw, fh = self.rng.uniform(0.55, 0.8), self.rng.uniform(0.55, 0.8)
        w, h = round(image.width * fw), round(image.height * fh)
        x, y = self.rng.randrange(image.width - w + 1), self.rng.randrange(image.height - h + 1)
        view = image.crop((x, y, x + w, y + h))
        if self.rng.random() < 0.5:
            view = view.transpose(images.Image.Transpose.FLIP_LEFT_RIGHT)
        view.thumbnail((256, 256), images.Image.Resampling.LANCZOS)
        return AssetRef(
            url=self.name(TRUSTED_PREFIX, "jpg", stem=name), kind="image", label=Label.CLEAN, markup="list",
            shown_text=caption, true_caption=caption, body=images.encode(view, "jpeg"), real_photo=True,
            width=view.width, height=view.height, media_format="jpeg", trusted=True,
        )

    def photo(self, name: str) -> AssetRef:
        body, caption, size = images.photo(name)
        return AssetRef(
            url=self.name("/images/photos/", "jpg", stem=name),
            kind="image",
            label=Label.CLEAN,
            markup="figure",
            shown_text=caption,
            true_caption=caption,
            body=body,
            real_photo=True,
            width=size[0],
            height=size[1],
            media_format="jpeg",
        )

    def mismatched(self, donor: AssetRef) -> AssetRef:
        """Shows ``donor``'s caption; the image's colour and shape are words that caption never uses.

        Not just "differs from the donor": a donor caption "an orange star on a black background" must not land
        on a black image, or a word-level check could call the wrong caption half right.
        """
        said = set(re.findall(r"[a-z]+", (donor.shown_text or "").lower()))
        colour = self.rng.choice([c for c in images.COLOURS if c != donor.colour and c not in said])
        shape = self.rng.choice([s for s in images.SHAPES if s != donor.shape and s not in said])
        ref = self._synthetic(Label.MISMATCHED, images.random_scene(self.rng, shape=shape, colour=colour))
        ref.shown_text = donor.shown_text
        return ref

    def junk(self) -> AssetRef:
        ref = self._synthetic(Label.JUNK_TEXT)
        ref.shown_text = self.rng.choice(JUNK_TEXTS)
        return ref

    def duplicate(self, original: AssetRef) -> AssetRef:
        """Byte-identical copy at another URL (a mirror / CDN path), with its own correct caption."""
        return _copy_of(
            original,
            Label.DUPLICATE,
            url=self.name("/cdn/", EXTENSIONS[original.media_format]),
            body=original.body,
            shown_text=self._recaption(original),
        )

    def near_duplicate(self, original: AssetRef) -> AssetRef:
        # re-saving a PNG as PNG with the same encoder settings would give the same bytes: an exact duplicate
        variants = [v for v in NEAR_DUPLICATE_VARIANTS if not (v == "to_png" and original.media_format == "png")]
        variant = self.rng.choice(variants)
        body, fmt = images.near_duplicate(original.body, variant, self.rng)
        copy = _copy_of(
            original,
            Label.NEAR_DUPLICATE,
            url=self.name(self.rng.choice(IMAGE_DIRS), EXTENSIONS[fmt]),
            body=body,
            shown_text=self._recaption(original),
        )
        copy.media_format = fmt
        copy.width, copy.height = images.decode(body).size
        return copy

    def srcset_pair(self) -> tuple[AssetRef, AssetRef]:
        """A 1x src and its 2x candidate: the same scene rendered at twice the size (a near-duplicate)."""
        scene = images.random_scene(self.rng)
        width, height = self.rng.randrange(64, 257), self.rng.randrange(64, 257)
        src = self._synthetic(Label.CLEAN, scene, fmt="jpeg", size=(width, height))
        big = self._synthetic(Label.NEAR_DUPLICATE, scene, fmt="jpeg", size=(2 * width, 2 * height))
        big.url = src.url.rsplit(".", 1)[0] + "@2x.jpg"
        big.duplicate_of, big.shown_text = src.url, src.shown_text
        src.markup = big.markup = "srcset"
        return src, big

    def _recaption(self, original: AssetRef) -> str:
        scene = images.Scene(original.shape, original.colour, original.background, 0.5, 0.5, 0.3, 0, 0, 0)
        return describe(scene, self.rng)

    # ---- failure modes -------------------------------------------------------------------------------------
    def failures(self) -> list[AssetRef]:
        """One or more references for every image failure mode in the vocabulary."""
        rng, out = self.rng, []

        def broken(
            label: Label,
            url: str,
            body: bytes | None,
            status: int | None = 200,
            true_caption: str | None = None,
            fmt: str | None = None,
        ) -> AssetRef:
            scene = images.random_scene(rng)
            return AssetRef(
                url=url,
                kind="image",
                label=label,
                markup="img",
                shown_text=describe(scene, rng),
                true_caption=true_caption,
                body=body,
                expected_status=status,
                media_format=fmt,
            )

        directory = lambda: rng.choice(IMAGE_DIRS)  # noqa: E731
        out.append(
            broken(Label.CORRUPT, self.name(directory(), "jpg"), images.corrupt_bytes(rng, rng.randrange(2000, 8000)))
        )
        out.append(broken(Label.CORRUPT, self.name(directory(), "png"), images.HTML_ERROR_PAGE))
        for fmt, fraction in (("jpeg", 0.5), ("png", 0.6)):
            whole = self._synthetic(Label.TRUNCATED, fmt=fmt, size=(256, 256))
            whole.body = images.truncated(whole.body, fraction)
            out.append(whole)
        out.append(broken(Label.ZERO_BYTE, self.name(directory(), "jpg"), b""))
        bomb = broken(Label.DECOMPRESSION_BOMB, self.name(directory(), "png"), images.decompression_bomb(), fmt="png")
        bomb.width = bomb.height = images.BOMB_SIZE
        out.append(bomb)
        for _ in range(2):
            out.append(broken(Label.BROKEN_LINK, self.name("/images/archive/", "jpg"), None, status=404))
        out.append(self.robots_blocked())
        for value in ("noai", "noai, noimageai"):
            ref = self._synthetic(Label.NOAI)
            ref.headers = {"X-Robots-Tag": value}
            out.append(ref)
        name = self.name("", "jpg")
        out.append(broken(Label.REDIRECT_LOOP, f"{LOOP_PREFIX}a/{name}", None, status=302))
        out.append(broken(Label.TIMEOUT, self.name(SLOW_PREFIX, "jpg"), None, status=None))
        out.append(broken(Label.SERVER_ERROR, self.name(ERROR_PREFIX, "jpg"), None, status=500))
        out.append(broken(Label.TOO_LARGE, self.name(HUGE_PREFIX, "jpg"), None, status=200))
        out.append(broken(Label.NOT_ALLOWED_ADDRESS, NOT_ALLOWED_URL, None, status=None))
        return out

    def robots_blocked(self) -> AssetRef:
        return self._synthetic(Label.ROBOTS_BLOCKED, directory=f"{ROBOTS_DISALLOWED_PREFIX}img/")

    def latin1(self) -> AssetRef:
        """A fine image whose caption (with accents) sits on a Latin-1 page that declares no charset."""
        ref = self._synthetic(Label.NOT_UTF8)
        ref.shown_text = f"Café sign: {ref.true_caption}"
        return ref


def _copy_of(original: AssetRef, label: Label, *, url: str, body: bytes, shown_text: str) -> AssetRef:
    return AssetRef(
        url=url,
        kind="image",
        label=label,
        markup="img",
        shown_text=shown_text,
        true_caption=original.true_caption,
        body=body,
        duplicate_of=original.url,
        shape=original.shape,
        colour=original.colour,
        background=original.background,
        width=original.width,
        height=original.height,
        media_format=original.media_format,
    )
