"""The demo site generator: determinism, layout, and that the ground truth says exactly what the files are."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, deque
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import srt
import webvtt
from PIL import Image, UnidentifiedImageError

from mmcurate.pipeline.demo.site import MIN_PAGES, Label, build_site, write_url_list
from mmcurate.pipeline.demo.site.audio import SPEECH_DIR, load_clips
from mmcurate.pipeline.demo.site.audio_refs import AUDIO_PAGES, NARRATED_FIGURES
from mmcurate.pipeline.demo.site.images import BACKGROUNDS, BOMB_SIZE, COLOURS, SHAPES, png_claimed_size
from mmcurate.pipeline.demo.site.labels import BASE_URL_TOKEN, HEADERS_SIDECAR, NOT_ALLOWED_URL
from site_helpers import decode_image, parse_page, resolve, tree_hashes, words

# labels whose URL is answered dynamically by the server, or never fetched: no file behind them
NO_FILE_LABELS = {"broken_link", "redirect_loop", "timeout", "server_error", "too_large", "not_allowed_address"}
UNDECODABLE_IMAGE_LABELS = {"corrupt", "truncated", "zero_byte", "decompression_bomb"}
# what Pillow raises for each undecodable label (truncated: a plain OSError saying so, from ImageFile.load)
UNDECODABLE_IMAGE_ERRORS = {
    "corrupt": (UnidentifiedImageError, "cannot identify image file"),
    "zero_byte": (UnidentifiedImageError, "cannot identify image file"),
    "truncated": (OSError, "image file is truncated"),
    "decompression_bomb": (Image.DecompressionBombError, "could be decompression bomb"),
}
# audio the site plans from its fixed tables: every page clip and every narrated figure carries subtitles
SUBTITLED_CLIPS = len(AUDIO_PAGES) + len(NARRATED_FIGURES)


# ---- determinism --------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_site_and_answer_key(demo_site, tmp_path):
    again = build_site(tmp_path / "again", seed=demo_site.seed, pages=demo_site.pages, trusted=demo_site.n_trusted)
    assert tree_hashes(again.root) == tree_hashes(demo_site.root)
    assert again.label_counts == demo_site.label_counts


def test_other_seed_gives_another_site(demo_site, tmp_path):
    other = build_site(tmp_path / "other", seed=demo_site.seed + 1, pages=demo_site.pages, trusted=demo_site.n_trusted)
    a, b = tree_hashes(demo_site.root), tree_hashes(other.root)
    assert a["ground_truth.parquet"] != b["ground_truth.parquet"]
    images_a = {h for k, h in a.items() if k.endswith((".jpg", ".png"))}
    images_b = {h for k, h in b.items() if k.endswith((".jpg", ".png"))}
    # shared: the scikit-image photos, the (seed-independent) bomb, the static HTML error page; not the synthetics
    assert len(images_a & images_b) < len(images_a) / 2


def test_rebuild_into_the_same_root_replaces_the_site(demo_site, tmp_path):
    first = build_site(tmp_path, seed=1, pages=MIN_PAGES, trusted=0)
    (first.site_dir / "stale.html").write_text("left over")
    second = build_site(tmp_path, seed=1, pages=MIN_PAGES, trusted=0)
    assert not (second.site_dir / "stale.html").exists()


def test_refuses_to_delete_a_directory_it_did_not_build(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a demo site"):
        build_site(tmp_path, pages=MIN_PAGES, trusted=0)
    assert (tmp_path / "site" / "precious.txt").exists()


def test_too_few_pages_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=f"pages must be at least {MIN_PAGES}"):
        build_site(tmp_path, pages=MIN_PAGES - 1)


# ---- layout -----------------------------------------------------------------------------------------------


def test_page_count_and_every_page_reachable_within_depth_4(demo_site):
    site = demo_site.site_dir
    html_files = {"/" + str(p.relative_to(site)) for p in site.rglob("*.html")}
    assert len(html_files) == demo_site.pages
    depth = {"/index.html": 0}
    queue = deque(["/index.html"])
    broken_page_links = set()
    while queue:
        page = queue.popleft()
        for link in parse_page(site, page).links:
            target = resolve(page, link)
            if not target.endswith(".html"):
                continue  # the SRT download links
            if target not in html_files:
                broken_page_links.add(target)
            elif target not in depth:
                depth[target] = depth[page] + 1
                queue.append(target)
    assert set(depth) == html_files
    assert max(depth.values()) <= 4
    assert broken_page_links == {"/articles/archive-2019.html"}  # the one deliberate dead page link


def test_html_references_and_ground_truth_agree_exactly(demo_site, ground_truth):
    """Every <img>/<audio>/srcset reference on every page is a ground-truth row for that page, and vice versa."""
    site = demo_site.site_dir
    on_pages = set()
    subtitles = set()
    styles = Counter()
    for page_file in site.rglob("*.html"):
        page = "/" + str(page_file.relative_to(site))
        for ref in parse_page(site, page).media:
            styles["absolute" if ref.startswith(BASE_URL_TOKEN) else "root" if ref.startswith("/") else "relative"] += 1
            target = resolve(page, ref)
            (subtitles if target.endswith((".vtt", ".srt")) else on_pages).add((target, page))
    pool = [r for r in ground_truth if not r["trusted"]]  # the trusted section is on no page
    rows = {(r["url"], r["page"]) for r in pool}
    assert len(on_pages) == demo_site.n_images + demo_site.n_audio > 0  # the pages really reference every asset
    assert on_pages == rows
    assert len(rows) == len(pool)  # one row per reference, no repeats
    assert len(subtitles) == SUBTITLED_CLIPS
    assert subtitles == {(r["subtitle_url"], r["page"]) for r in ground_truth if r["subtitle_url"]}
    assert min(styles.values()) > 0 and len(styles) == 3  # relative, root-relative and absolute all occur


def test_every_asset_file_is_in_the_ground_truth(demo_site, ground_truth):
    site = demo_site.site_dir
    files = {"/" + str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    pages = {f for f in files if f.endswith(".html")}
    subtitles = {r["subtitle_url"] for r in ground_truth if r["subtitle_url"]}
    assets = {r["url"] for r in ground_truth if r["file_exists"]}
    assert len(pages) == demo_site.pages and len(subtitles) == SUBTITLED_CLIPS
    assert len(assets) > demo_site.n_images / 2  # most image references have a file behind them
    assert files == pages | subtitles | assets | {"/robots.txt", f"/{HEADERS_SIDECAR}"}


def test_answer_key_is_outside_the_served_directory(demo_site):
    for path in (demo_site.ground_truth, demo_site.url_list_csv, demo_site.url_list_parquet,
                 demo_site.trusted_list_csv, demo_site.trusted_list_parquet):
        assert path.exists() and demo_site.site_dir not in path.parents


# ---- ground truth ----------------------------------------------------------------------------------------


def test_vocabulary_is_closed_and_every_label_occurs(demo_site, ground_truth):
    pool = [r for r in ground_truth if not r["trusted"]]
    labels = Counter(r["label"] for r in pool)
    assert set(labels) == {label.value for label in Label}
    assert labels == Counter(demo_site.label_counts)
    assert demo_site.n_images == sum(r["kind"] == "image" for r in pool)
    assert demo_site.n_audio == sum(r["kind"] == "audio" for r in pool) == 17
    assert 1.8 * demo_site.pages <= demo_site.n_images <= 2.4 * demo_site.pages  # about two per page
    assert labels["clean"] > sum(n for k, n in labels.items() if k != "clean") / 2
    assert labels["duplicate"] >= 2 and labels["near_duplicate"] >= 2 and labels["mismatched"] >= 3


def test_label_counts_scale_with_the_site(tmp_path):
    big = build_site(tmp_path, seed=3, pages=120, trusted=0)
    counts = big.label_counts
    assert 220 <= big.n_images <= 260
    assert counts["mismatched"] >= 15 and counts["junk_text"] >= 12 and counts["duplicate"] >= 9
    assert counts["decompression_bomb"] == 1 and counts["timeout"] == 1  # failure modes do not multiply


def test_files_exist_exactly_where_the_ground_truth_says(demo_site, ground_truth):
    hashed, absent = set(), set()  # labels checked each way
    for r in ground_truth:
        path = demo_site.site_dir / r["url"].lstrip("/")
        assert r["file_exists"] == (r["label"] not in NO_FILE_LABELS), r
        if r["file_exists"]:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"]
            hashed.add(r["label"])
        elif r["url"].startswith("/"):
            assert not path.exists()
            absent.add(r["label"])
    assert hashed == {label.value for label in Label} - NO_FILE_LABELS
    assert absent == NO_FILE_LABELS - {"not_allowed_address"}  # the only off-site reference
    assert [r["url"] for r in ground_truth if r["label"] == "not_allowed_address"] == [NOT_ALLOWED_URL]


def test_clean_images_decode_at_their_recorded_size(demo_site, ground_truth):
    decoded = Counter()
    for r in ground_truth:
        if r["kind"] == "image" and r["file_exists"] and r["label"] not in UNDECODABLE_IMAGE_LABELS:
            image = decode_image((demo_site.site_dir / r["url"].lstrip("/")).read_bytes())
            assert image.size == (r["width"], r["height"]), r["url"]
            decoded[r["label"]] += 1
    # every decodable image label was exercised, and every clean image (the bulk of the site) among them
    audio_only = {"broken_audio", "malformed_subtitle"}
    assert set(decoded) == {label.value for label in Label} - NO_FILE_LABELS - UNDECODABLE_IMAGE_LABELS - audio_only
    clean_images = sum(r["kind"] == "image" and r["label"] == "clean" for r in ground_truth)
    assert decoded["clean"] == clean_images > demo_site.n_images / 3


def test_broken_images_do_not_decode(demo_site, ground_truth):
    broken = [r for r in ground_truth if r["label"] in UNDECODABLE_IMAGE_LABELS]
    assert {r["label"] for r in broken} == UNDECODABLE_IMAGE_LABELS
    for r in broken:
        error, message = UNDECODABLE_IMAGE_ERRORS[r["label"]]
        with pytest.raises(error, match=message):
            decode_image((demo_site.site_dir / r["url"].lstrip("/")).read_bytes())


def test_decompression_bomb_claims_a_huge_size_but_is_small(demo_site, ground_truth):
    (bomb,) = [r for r in ground_truth if r["label"] == "decompression_bomb"]
    data = (demo_site.site_dir / bomb["url"].lstrip("/")).read_bytes()
    assert png_claimed_size(data) == (BOMB_SIZE, BOMB_SIZE) == (bomb["width"], bomb["height"])
    assert len(data) < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_synthetic_pixels_show_the_true_colour(demo_site, ground_truth):
    """The shape's pixels (those far from the background) have the colour the true caption names."""
    checked = 0
    for r in ground_truth:
        if r["colour"] and r["file_exists"] and r["label"] not in UNDECODABLE_IMAGE_LABELS:
            pixels = np.asarray(decode_image((demo_site.site_dir / r["url"].lstrip("/")).read_bytes()), dtype=float)
            far = np.linalg.norm(pixels - np.array(BACKGROUNDS[r["background"]]), axis=-1) > 80
            shape_colour = np.median(pixels[far], axis=0)
            assert np.linalg.norm(shape_colour - np.array(COLOURS[r["colour"]])) < 45, r["url"]
            assert r["true_caption"].endswith(f"{r['colour']} {r['shape']}")
            checked += 1
    assert checked > 40


def test_clean_text_describes_and_mismatched_text_does_not(demo_site, ground_truth):
    described, mismatched = set(), 0
    for r in ground_truth:
        if r["colour"] is None or r["shown_text"] is None:
            continue
        said = words(r["shown_text"])
        if r["label"] in ("clean", "duplicate", "near_duplicate", "noai", "not_utf8") and r["markup"] != "figure_audio":
            assert {r["colour"], r["shape"]} <= said, r
            described.add(r["label"])
        if r["label"] == "mismatched":
            assert r["colour"] not in said and r["shape"] not in said, r
            assert said & set(COLOURS) and said & set(SHAPES)
            mismatched += 1
    assert described == {"clean", "duplicate", "near_duplicate", "noai", "not_utf8"}
    assert mismatched == demo_site.label_counts["mismatched"] >= 3  # every mismatched reference was checked


def test_junk_text_is_junk(ground_truth):
    junk = [r["shown_text"] for r in ground_truth if r["label"] == "junk_text"]
    assert len(junk) >= 3  # the generator plans at least three (max(3, 7%))
    for text in junk:
        assert text is None or not words(text) & (set(COLOURS) | set(SHAPES))


def test_exact_duplicates_are_byte_identical_to_a_clean_original(demo_site, ground_truth):
    by_url = {r["url"]: r for r in ground_truth}
    duplicates = [r for r in ground_truth if r["label"] == "duplicate"]
    assert len(duplicates) >= 2
    for r in duplicates:
        original = by_url[r["duplicate_of"]]
        assert original["label"] == "clean" and r["url"] != original["url"]
        assert (demo_site.site_dir / r["url"].lstrip("/")).read_bytes() == (
            demo_site.site_dir / original["url"].lstrip("/")
        ).read_bytes()


def test_near_duplicates_differ_in_bytes_but_not_in_look(demo_site, ground_truth):
    by_url = {r["url"]: r for r in ground_truth}
    near = [r for r in ground_truth if r["label"] == "near_duplicate"]
    assert any(r["markup"] == "srcset" for r in near) and any(r["markup"] != "srcset" for r in near)
    for r in near:
        original = by_url[r["duplicate_of"]]
        assert original["label"] == "clean"
        a = (demo_site.site_dir / r["url"].lstrip("/")).read_bytes()
        b = (demo_site.site_dir / original["url"].lstrip("/")).read_bytes()
        assert a != b
        small = (32, 32)
        pa = np.asarray(decode_image(a).resize(small), dtype=float)
        pb = np.asarray(decode_image(b).resize(small), dtype=float)
        assert np.abs(pa - pb).mean() < 25, r["url"]  # unrelated images differ by ~60-100 here
    # while images that merely share a label do not look alike
    clean = [r for r in ground_truth if r["label"] == "clean" and r["colour"]][:2]
    assert len(clean) == 2
    pa, pb = (
        np.asarray(decode_image((demo_site.site_dir / r["url"].lstrip("/")).read_bytes()).resize((32, 32)), dtype=float)
        for r in clean
    )
    assert clean[0]["colour"] == clean[1]["colour"] or np.abs(pa - pb).mean() > 25


def test_real_photos_are_captioned_from_scikit_image(ground_truth):
    import skimage.data

    photos = [r for r in ground_truth if r["real_photo"]]
    assert len(photos) >= 4  # three in the mix plus the astronaut figure
    for r in photos:
        name = r["url"].rsplit("/", 1)[1].rsplit("_", 1)[0]
        assert r["true_caption"] == getattr(skimage.data, name).__doc__.strip().splitlines()[0].strip()


def test_robots_noai_and_headers_sidecar(demo_site, ground_truth):
    site = demo_site.site_dir
    assert "Disallow: /private/" in (site / "robots.txt").read_text()
    blocked = [r for r in ground_truth if r["label"] == "robots_blocked"]
    assert len(blocked) == 3 and all(r["url"].startswith("/private/") for r in blocked)
    on_private = [r for r in ground_truth if r["page"].startswith("/private/")]
    assert on_private and all(r["label"] == "robots_blocked" for r in on_private)
    sidecar = json.loads((site / HEADERS_SIDECAR).read_text())
    noai = {r["url"] for r in ground_truth if r["label"] == "noai"}
    assert set(sidecar) == noai and len(noai) == 2
    assert all("noai" in headers["X-Robots-Tag"] for headers in sidecar.values())


def test_latin1_page_has_no_charset_and_is_not_utf8(demo_site, ground_truth):
    (row,) = [r for r in ground_truth if r["label"] == "not_utf8" and r["kind"] == "image"]
    raw = (demo_site.site_dir / row["page"].lstrip("/")).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert b"charset" not in raw.lower()
    assert row["shown_text"] in raw.decode("latin-1")
    assert [r for r in ground_truth if r["page"] == row["page"]] == [row]  # nothing else shares its fate


# ---- audio and subtitles -------------------------------------------------------------------------------


def _cues(clip_id: str) -> list[tuple[int, int, str]]:
    return [(c.start_ms, c.end_ms, c.text) for c in load_clips()[clip_id].cues]


def _vtt_ms(stamp: str) -> int:
    h, m, s = stamp.split(":")
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def test_speech_assets_are_small_short_and_exactly_timed():
    listing = json.loads((SPEECH_DIR / "speech.json").read_text())
    total = sum((SPEECH_DIR / c["file"]).stat().st_size for c in listing["clips"])
    assert len(listing["clips"]) >= 12 and total < 1_000_000
    for clip in listing["clips"]:
        info = sf.info(SPEECH_DIR / clip["file"])
        assert info.samplerate == clip["sample_rate"] and info.channels == 1
        assert info.frames == clip["duration_ms"] * clip["sample_rate"] // 1000
        assert 2000 <= clip["duration_ms"] <= 6000
        assert 2 <= len(clip["cues"]) <= 4
        assert " ".join(c["text"] for c in clip["cues"]) == clip["text"]
        bounds = [t for c in clip["cues"] for t in (c["start_ms"], c["end_ms"])]
        assert bounds == sorted(bounds) and 0 < bounds[0] and bounds[-1] < clip["duration_ms"]
        samples, rate = sf.read(SPEECH_DIR / clip["file"])
        for gap_start, gap_end in zip(bounds[1:-1:2], bounds[2::2]):  # between phrases: true silence
            assert np.abs(samples[gap_start * rate // 1000 : gap_end * rate // 1000]).max() == 0


def test_served_subtitles_carry_the_exact_cue_times(demo_site, ground_truth):
    checked, malformed, latin1, formats = 0, 0, 0, set()
    for r in ground_truth:
        if r["kind"] != "audio" or not r["subtitle_url"]:
            continue
        clip_id = Path(r["subtitle_url"]).stem
        expected = _cues(clip_id)
        assert list(zip(r["cue_start_ms"], r["cue_end_ms"], r["cue_texts"])) == expected
        raw = (demo_site.site_dir / r["subtitle_url"].lstrip("/")).read_bytes()
        if r["label"] == "malformed_subtitle":
            # no cue survives a strict parser: without the header the file is refused, with bad timestamps every
            # cue block is dropped
            if raw.startswith(b"WEBVTT"):
                assert list(webvtt.from_buffer(io.StringIO(raw.decode("utf-8")))) == [], r["subtitle_url"]
            else:
                with pytest.raises(webvtt.errors.MalformedFileError):
                    webvtt.from_buffer(io.StringIO(raw.decode("utf-8")))
            malformed += 1
            continue
        if r["label"] == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
            text = raw.decode("latin-1")
            latin1 += 1
        else:
            text = raw.decode("utf-8")
        if r["subtitle_format"] == "vtt":
            got = [(_vtt_ms(c.start), _vtt_ms(c.end), c.text) for c in webvtt.from_buffer(io.StringIO(text))]
        else:
            ms = timedelta(milliseconds=1)
            got = [(s.start // ms, s.end // ms, s.content) for s in srt.parse(text)]
        assert got == expected, r["url"]
        checked += 1
        formats.add(r["subtitle_format"])
    assert malformed == sum(label is Label.MALFORMED_SUBTITLE for *_, label in AUDIO_PAGES) >= 2
    assert latin1 == sum(label is Label.NOT_UTF8 for *_, label in AUDIO_PAGES) >= 1
    assert checked + malformed == SUBTITLED_CLIPS and formats == {"vtt", "srt"}


def test_audio_decodes_unless_broken(demo_site, ground_truth):
    broken, decoded = 0, 0
    for r in ground_truth:
        if r["kind"] != "audio" or not r["file_exists"]:
            continue
        path = demo_site.site_dir / r["url"].lstrip("/")
        if r["label"] == "broken_audio":
            with pytest.raises(sf.LibsndfileError):  # truncated FLAC: lost sync; random bytes: not recognised
                sf.read(path)
            broken += 1
        else:
            samples, rate = sf.read(path)
            assert len(samples) * 1000 // rate == load_clips()[Path(r["url"]).stem].duration_ms
            decoded += 1
    # the truncated page clip plus the random-bytes .wav; every other page clip and every narration decodes
    planned_broken = sum(label is Label.BROKEN_AUDIO for *_, label in AUDIO_PAGES)
    assert broken == planned_broken + 1
    assert decoded == SUBTITLED_CLIPS - planned_broken


def test_narrated_figures_tie_image_audio_and_caption(ground_truth):
    figures: dict[str, list[dict]] = {}
    for r in ground_truth:
        if r["figure_id"]:
            figures.setdefault(r["figure_id"], []).append(r)
    assert len(figures) == len(NARRATED_FIGURES) >= 1
    coloured = 0
    for rows in figures.values():
        assert sorted(r["kind"] for r in rows) == ["audio", "image"]
        image, sound = sorted(rows, key=lambda r: r["kind"], reverse=True)
        assert image["page"] == sound["page"] and image["shown_text"] == sound["shown_text"] == sound["true_caption"]
        if image["colour"]:
            assert image["colour"] in sound["true_caption"] and image["shape"] in sound["true_caption"]
            coloured += 1
    assert coloured == sum(spec.startswith("shape:") for _, spec, _, _ in NARRATED_FIGURES) >= 1


# ---- URL list ------------------------------------------------------------------------------------------


def test_url_list_points_at_a_third_of_the_images(demo_site, ground_truth):
    with demo_site.url_list_csv.open(newline="") as f:
        csv_rows = [(r["url"], r["caption"]) for r in csv.DictReader(f)]
    table = pq.read_table(demo_site.url_list_parquet)
    assert csv_rows == list(zip(table.column("url").to_pylist(), table.column("caption").to_pylist()))
    listed = [r for r in ground_truth if r["in_url_list"]]
    assert csv_rows == [(r["url"], r["shown_text"] or "") for r in listed]
    assert all(r["kind"] == "image" for r in listed)
    assert abs(len(listed) - demo_site.n_images / 3) <= 1
    assert {"clean", "mismatched", "broken_link", "corrupt", "not_allowed_address"} <= {r["label"] for r in listed}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_url_list_makes_site_paths_absolute(demo_site, tmp_path, suffix):
    out = write_url_list(demo_site.root, "http://127.0.0.1:8123/", tmp_path / f"urls{suffix}")
    if suffix == ".csv":
        with out.open(newline="") as f:
            urls = [r["url"] for r in csv.DictReader(f)]
    else:
        urls = pq.read_table(out).column("url").to_pylist()
    paths = pq.read_table(demo_site.url_list_parquet).column("url").to_pylist()
    assert urls == ["http://127.0.0.1:8123" + p if p.startswith("/") else p for p in paths]
    assert NOT_ALLOWED_URL in urls
