"""``build_site``: plan every asset reference, lay out the pages, write ``site/`` and the answer key."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mmcurate.pipeline.demo.config import MIN_PAGES, TRUSTED_IMAGES
from mmcurate.pipeline.demo.site import audio, images, personal
from mmcurate.pipeline.demo.site.assets import AssetRef, Block, ImagePlanner
from mmcurate.pipeline.demo.site.audio_refs import AUDIO_PAGES, NARRATED_FIGURES, audio_failures, clip_ref
from mmcurate.pipeline.demo.site.ground_truth import TRUSTED_LIST, URL_LIST, write_ground_truth, write_url_table
from mmcurate.pipeline.demo.site.labels import HEADERS_SIDECAR, ROBOTS_DISALLOWED_PREFIX, ROBOTS_TXT, Label
from mmcurate.pipeline.demo.site.pages import LATIN1_TEXT, Page, paragraph, render, title

logger = logging.getLogger(__name__)

IMAGE_SECTIONS = ("shapes", "photos", "gallery", "misc")
ARTICLES_PER_LISTING = 15
IMAGES_PER_PAGE = 2  # image references per page of the site, all kinds together
BROKEN_PAGE_LINK = "/articles/archive-2019.html"  # a navigation link that 404s
URL_LIST_FRACTION = 1 / 3
# one of each of these is always in the URL list, the rest is drawn at random
URL_LIST_MUST_HAVE = (
    Label.CLEAN,
    Label.MISMATCHED,
    Label.JUNK_TEXT,
    Label.DUPLICATE,
    Label.NEAR_DUPLICATE,
    Label.BROKEN_LINK,
    Label.CORRUPT,
    Label.TRUNCATED,
    Label.SERVER_ERROR,
    Label.NOT_ALLOWED_ADDRESS,
    Label.ROBOTS_BLOCKED,
    Label.NOAI,
)


@dataclass(frozen=True)
class SiteManifest:
    root: Path
    site_dir: Path
    ground_truth: Path
    url_list_csv: Path
    url_list_parquet: Path
    trusted_list_csv: Path
    trusted_list_parquet: Path
    seed: int
    pages: int  # HTML pages written
    seed_pages: tuple[str, ...]  # where a crawl starts (root-relative)
    label_counts: dict[str, int]  # asset references on the pages, by label
    n_images: int  # image references on the pages
    n_audio: int  # audio references
    n_trusted: int  # images of the trusted section (clean, on no page)


def _image_mix(planner: ImagePlanner, rng: random.Random, pages: int) -> list[Block]:
    """The article images: photos, clean/mismatched/junk synthetics, duplicates, srcset pairs, failure modes."""
    failures = planner.failures()
    photo_names = [p for p in images.PHOTOS if p != "astronaut"]  # the astronaut narrates a figure
    photos = [planner.photo(name) for name in photo_names[: min(len(photo_names), max(3, pages // 12))]]
    remaining = IMAGES_PER_PAGE * pages - len(failures) - len(NARRATED_FIGURES) - len(photos)
    n_dup, n_near = max(2, round(0.05 * remaining)), max(2, round(0.04 * remaining))
    n_srcset, n_mismatched, n_junk = (
        max(1, round(0.03 * remaining)),
        max(3, round(0.08 * remaining)),
        max(3, round(0.07 * remaining)),
    )
    n_clean = remaining - n_dup - n_near - 2 * n_srcset - n_mismatched - n_junk

    clean = [planner.clean() for _ in range(n_clean)]
    originals = rng.sample(clean, n_dup + n_near)
    copies = [planner.duplicate(o) for o in originals[:n_dup]] + [planner.near_duplicate(o) for o in originals[n_dup:]]
    mismatched = [planner.mismatched(rng.choice(clean)) for _ in range(n_mismatched)]
    junk = [planner.junk() for _ in range(n_junk)]

    blocks = [Block("srcset", list(planner.srcset_pair())) for _ in range(n_srcset)]
    blocks += [Block("figure", [p]) for p in photos]
    for ref in clean + copies + mismatched + junk + failures:
        # junk alt text is an <img> thing; elsewhere a figure with a figcaption is as common as a bare <img>
        ref.markup = "img" if ref.label is Label.JUNK_TEXT or rng.random() < 0.6 else "figure"
        if ref.markup == "img" and ref.shown_text and rng.random() < 0.3:
            ref.title_text = rng.choice((ref.shown_text, f"Figure {rng.randrange(1, 40)}"))
        blocks.append(Block(ref.markup, [ref]))
    return blocks


def _narrated_figures(planner: ImagePlanner, rng: random.Random) -> list[Block]:
    clips, blocks = audio.load_clips(), []
    for clip_id, image_spec, audio_fmt, subtitle_fmt in NARRATED_FIGURES:
        clip = clips[clip_id]
        kind, *spec = image_spec.split(":")
        if kind == "photo":
            image = planner.photo(spec[0])
        else:
            shape, colour, background = spec
            image = planner.clean(images.random_scene(rng, shape=shape, colour=colour, background=background))
        narration = clip_ref(clip, audio_fmt, subtitle_fmt, Label.CLEAN, "figure_audio")
        for ref in (image, narration):
            ref.markup, ref.figure_id, ref.shown_text = "figure_audio", f"fig-{clip_id}", clip.text
        blocks.append(Block("figure_audio", [image, narration]))
    return blocks


def _trusted_section(seed: int, n: int, photo_views: int = 0) -> list[AssetRef]:
    """``n`` clean synthetics for the trusted list, every colour x shape once per round of ``len(combinations)``
    (balanced classes for a filter trained on them). Drawn from their own RNG, after the pool: the pages and
    media of a seed are the same whatever ``n`` is."""
    rng = random.Random(f"{seed}-trusted")
    planner = ImagePlanner(rng)
    combinations = [(colour, shape) for colour in images.COLOURS for shape in images.SHAPES]
    refs: list[AssetRef] = []
    while len(refs) < n:
        for colour, shape in rng.sample(combinations, len(combinations))[: n - len(refs)]:
            refs.append(planner.trusted(images.random_scene(rng, shape=shape, colour=colour)))
    for name in images.PHOTOS:  # after the synthetics: those stay the same whatever photo_views is
        refs += [planner.trusted_photo_view(name) for _ in range(photo_views)]
    return refs


def _split_articles(n: int) -> tuple[list[int], list[int]]:
    """Share ``n`` pages among the image sections' listing pages and articles: (articles, listings) per section."""
    k = len(IMAGE_SECTIONS)
    for listings in range(k, n):
        articles = [(n - listings) // k + (i < (n - listings) % k) for i in range(k)]
        needed = [math.ceil(a / ARTICLES_PER_LISTING) for a in articles]
        if min(articles) >= 1 and sum(needed) <= listings:
            extra = listings - sum(needed)  # give leftover listing pages to sections that have articles to spare
            for i in range(extra):
                needed[i % k] += 1
            return articles, [min(need, a) for need, a in zip(needed, articles)]
    raise ValueError(f"cannot lay out {n} section pages")


def _layout(rng: random.Random, pages: int, image_blocks: list[Block], planner: ImagePlanner) -> list[Page]:
    clips = audio.load_clips()
    index = Page("/index.html", "Demo Site Home", paragraphs=[paragraph(rng)])
    sounds = Page("/sections/sounds.html", "Sounds", paragraphs=[paragraph(rng)])
    audio_pages = []
    for clip_id, audio_fmt, subtitle_fmt, label in AUDIO_PAGES:
        page = Page(
            f"/audio/{clip_id}.html", f"Recording: {clip_id.replace('_', ' ').title()}", paragraphs=[paragraph(rng)]
        )
        page.place(
            Block("audio", [clip_ref(clips[clip_id], audio_fmt, subtitle_fmt, label, "audio")], heading=page.title)
        )
        audio_pages.append(page)
    for ref in audio_failures(rng):
        page = Page(
            f"/audio/{ref.url.rsplit('/', 1)[1].split('.')[0]}.html", ref.shown_text, paragraphs=[paragraph(rng)]
        )
        page.place(Block("audio", [ref], heading=ref.shown_text))
        audio_pages.append(page)
    private = Page(f"{ROBOTS_DISALLOWED_PREFIX}index.html", "Staff Only", paragraphs=[paragraph(rng)])
    for _ in range(2):
        ref = planner.robots_blocked()
        private.place(Block("img", [ref]))

    fixed = 3 + len(audio_pages)  # index, sounds listing, private, audio pages
    articles_per_section, listings_per_section = _split_articles(pages - fixed)
    listings: list[Page] = []
    articles: list[Page] = []
    for section, n_articles, n_listings in zip(IMAGE_SECTIONS, articles_per_section, listings_per_section):
        section_articles = [
            Page(
                f"/articles/{section}/{title(rng).lower().replace(' ', '-')}-{i + 1}.html",
                title(rng),
                paragraphs=[paragraph(rng) for _ in range(rng.randrange(2, 5))],
            )
            for i in range(n_articles)
        ]
        section_listings = [
            Page(
                f"/sections/{section}.html" if k == 0 else f"/sections/{section}-{k + 1}.html",
                f"{section.title()} (page {k + 1})",
                paragraphs=[paragraph(rng)],
            )
            for k in range(n_listings)
        ]
        for k, listing in enumerate(section_listings):
            listing.links = [("/index.html", "Home")] + [(p.path, str(j + 1)) for j, p in enumerate(section_listings)]
            chunk = section_articles[k::n_listings]
            listing.listing = [(a.path, a.title) for a in chunk]
            for j, article in enumerate(chunk):
                article.links = [("/index.html", "Home"), (listing.path, section.title())]
        for j, article in enumerate(section_articles):
            if j:
                article.links.append((section_articles[j - 1].path, "Previous"))
            if j + 1 < len(section_articles):
                article.links.append((section_articles[j + 1].path, "Next"))
        listings += section_listings
        articles += section_articles

    # the Latin-1 page is a misc article holding only its own image, so its label covers everything on it
    latin1 = next(a for a in articles if a.path.startswith("/articles/misc/"))
    latin1.title, latin1.encoding = "Café Notes", "latin-1"
    latin1.paragraphs = [LATIN1_TEXT] + latin1.paragraphs
    latin1.place(Block("img", [planner.latin1()]))
    hosts = [a for a in articles if a is not latin1]
    for a in hosts:  # cross links: the site is a graph, not a tree
        for target in rng.sample(articles + audio_pages, 2):
            if target is not a:
                a.links.append((target.path, target.title))
    rng.shuffle(image_blocks)
    order = rng.sample(hosts, len(hosts))
    for i, block in enumerate(image_blocks):
        order[i % len(order)].place(block)

    index.links = (
        [("/index.html", "Home")]
        + [(f"/sections/{s}.html", s.title()) for s in IMAGE_SECTIONS]
        + [(sounds.path, "Sounds"), (private.path, "Staff"), (BROKEN_PAGE_LINK, "Archive 2019")]
    )
    index.listing = [(a.path, a.title) for a in rng.sample(articles, min(5, len(articles)))]
    sounds.links = [("/index.html", "Home")]
    sounds.listing = [(p.path, p.title) for p in audio_pages]
    for page in audio_pages + [private]:
        page.links = [("/index.html", "Home"), (sounds.path, "Sounds")]
    return [index, *listings, sounds, *articles, *audio_pages, private]


def _choose_url_list(rng: random.Random, refs: list[AssetRef]) -> None:
    image_refs = [r for r in refs if r.kind == "image"]
    chosen = [rng.choice([r for r in image_refs if r.label is label]) for label in URL_LIST_MUST_HAVE]
    rest = [r for r in image_refs if r not in chosen]
    target = max(len(chosen), round(URL_LIST_FRACTION * len(image_refs)))
    for ref in chosen + rng.sample(rest, target - len(chosen)):
        ref.in_url_list = True


def _prepare(root: Path) -> Path:
    """Empty ``root/site`` for a rebuild, but only if it is one of ours (has the sidecar) or empty."""
    site = root / "site"
    if site.exists():
        if any(site.iterdir()) and not (site / HEADERS_SIDECAR).exists():
            raise FileExistsError(f"{site} exists and is not a demo site; refusing to delete it")
        shutil.rmtree(site)
    site.mkdir(parents=True)
    return site


def _write(site: Path, url: str, data: bytes) -> None:
    path = site / url.lstrip("/")
    if path.exists():
        raise RuntimeError(f"two assets planned at {url}")  # a planning bug would silently change ground truth
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_site(root: Path, *, seed: int = 0, pages: int = 200, trusted: int = TRUSTED_IMAGES,
               trusted_photo_views: int = 0, personal_data: int = 0) -> SiteManifest:
    """Write the demo site under ``root/site/`` and its answer key beside it; same seed, same bytes.

    ``trusted``: images of the trusted section, under ``site/trusted/`` and listed in ``root/trusted_list.*``.
    ``personal_data``: captions (and a quarter as many transcripts) with planted personal data (``personal.py``).
    """
    if pages < MIN_PAGES:
        raise ValueError(f"pages must be at least {MIN_PAGES}, got {pages}")
    root = Path(root)
    rng = random.Random(seed)
    planner = ImagePlanner(rng)
    image_blocks = _image_mix(planner, rng, pages) + _narrated_figures(planner, rng)
    site_pages = _layout(rng, pages, image_blocks, planner)
    refs = [ref for page in site_pages for block in page.blocks for ref in block.refs]
    _choose_url_list(rng, refs)
    personal.plant(refs, personal_data, seed)
    trusted_refs = _trusted_section(seed, trusted, trusted_photo_views)

    site = _prepare(root)
    headers: dict[str, dict[str, str]] = {}
    for page in site_pages:
        _write(site, page.path, render(page, seed))
    for ref in refs + trusted_refs:
        if ref.body is not None:
            _write(site, ref.url, ref.body)
        if ref.subtitle_body is not None:
            _write(site, ref.subtitle_url, ref.subtitle_body)
        if ref.headers:
            headers[ref.url] = ref.headers
    (site / "robots.txt").write_text(ROBOTS_TXT, encoding="ascii")
    (site / HEADERS_SIDECAR).write_text(json.dumps(headers, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    ground_truth = root / "ground_truth.parquet"
    write_ground_truth(refs + trusted_refs, ground_truth)
    lists = {URL_LIST: [r for r in refs if r.in_url_list], TRUSTED_LIST: trusted_refs}
    for name, listed in lists.items():
        rows = [(r.url, r.shown_text or "") for r in listed]
        write_url_table(rows, root / f"{name}.csv")
        write_url_table(rows, root / f"{name}.parquet")

    counts = Counter(r.label.value for r in refs)
    manifest = SiteManifest(
        root=root,
        site_dir=site,
        ground_truth=ground_truth,
        url_list_csv=root / f"{URL_LIST}.csv",
        url_list_parquet=root / f"{URL_LIST}.parquet",
        trusted_list_csv=root / f"{TRUSTED_LIST}.csv",
        trusted_list_parquet=root / f"{TRUSTED_LIST}.parquet",
        seed=seed,
        pages=len(site_pages),
        seed_pages=("/index.html",),
        label_counts=dict(sorted(counts.items())),
        n_images=sum(r.kind == "image" for r in refs),
        n_audio=sum(r.kind == "audio" for r in refs),
        n_trusted=len(trusted_refs),
    )
    logger.info(
        "demo site: %d pages, %d images, %d audio, %d trusted images under %s",
        manifest.pages, manifest.n_images, manifest.n_audio, manifest.n_trusted, site,
    )
    return manifest
