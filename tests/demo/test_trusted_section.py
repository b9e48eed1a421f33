"""The demo site's trusted section: clean images a filter model is trained on, reachable only from a list."""

from __future__ import annotations

import csv
import hashlib
import urllib.request
from collections import Counter

import pyarrow.parquet as pq
import pytest

from mmcurate.pipeline.demo.site import TRUSTED_LIST, build_site, write_url_list
from mmcurate.pipeline.demo.site.images import BACKGROUNDS, COLOURS, SHAPES, article
from mmcurate.pipeline.demo.site.labels import TRUSTED_PREFIX
from site_helpers import decode_image, parse_page, resolve, tree_hashes, words


@pytest.fixture(scope="module")
def trusted(ground_truth) -> list[dict]:
    return [r for r in ground_truth if r["trusted"]]


def listed(path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(r["url"], r["caption"]) for r in csv.DictReader(f)]


def test_the_trusted_section_has_the_asked_number_of_clean_images_each_in_the_list(demo_site, trusted):
    files = sorted("/" + str(p.relative_to(demo_site.site_dir)) for p in (demo_site.site_dir / "trusted").iterdir())
    assert demo_site.n_trusted == len(trusted) == len(files) > len(COLOURS) * len(SHAPES)
    assert sorted(r["url"] for r in trusted) == files
    assert listed(demo_site.trusted_list_csv) == [(r["url"], r["shown_text"]) for r in trusted]
    table = pq.read_table(demo_site.trusted_list_parquet)
    assert list(zip(table.column("url").to_pylist(), table.column("caption").to_pylist())) == listed(
        demo_site.trusted_list_csv
    )


def test_every_colour_and_shape_combination_appears_about_equally_often(trusted):
    combinations = Counter((r["colour"], r["shape"]) for r in trusted)
    assert set(combinations) == {(c, s) for c in COLOURS for s in SHAPES}
    assert max(combinations.values()) - min(combinations.values()) <= 1  # whole rounds, then part of one


def test_trusted_images_vary_like_the_clean_pool(trusted):
    assert {r["media_format"] for r in trusted} == {"jpeg", "png"}
    assert len({r["background"] for r in trusted}) == len(BACKGROUNDS)
    assert len({(r["width"], r["height"]) for r in trusted}) > len(trusted) / 2
    assert len({r["sha256"] for r in trusted}) == len(trusted)


def test_trusted_captions_are_right_about_the_scene_in_varied_wordings(demo_site, trusted):
    for r in trusted:
        said = words(r["shown_text"])
        assert {r["colour"], r["shape"]} <= said, r
        assert not (said & set(COLOURS)) - {r["colour"]} - set(words(r["background"])), r  # no other colour named
        assert not (said & set(SHAPES)) - {r["shape"]}, r
        if "background" in said or "against" in said:
            assert r["background"] in r["shown_text"], r
        assert r["true_caption"] == f"{article(r['colour'])} {r['colour']} {r['shape']}"
        image = decode_image((demo_site.site_dir / r["url"].lstrip("/")).read_bytes())
        assert image.size == (r["width"], r["height"])
    # the describe() templates, not one fixed phrase: "Photo of ...", "... on a navy background", "Red star", ...
    assert len({r["shown_text"].replace(r["colour"], "C").replace(r["colour"].capitalize(), "C")
                .replace(r["shape"], "S").replace(r["background"], "B") for r in trusted}) >= 5


def test_no_page_links_to_the_trusted_section(demo_site, trusted):
    site = demo_site.site_dir
    referenced = set()
    for page_file in site.rglob("*.html"):
        page = "/" + str(page_file.relative_to(site))
        refs = parse_page(site, page)
        referenced |= {resolve(page, ref) for ref in refs.links + refs.media}
    assert not {r for r in referenced if r.startswith(TRUSTED_PREFIX)}
    assert not referenced & {r["url"] for r in trusted}


def test_ground_truth_marks_the_trusted_rows_and_only_them(ground_truth, trusted):
    assert {type(r["trusted"]) for r in ground_truth} == {bool}
    assert {r["url"] for r in ground_truth if r["url"].startswith(TRUSTED_PREFIX)} == {r["url"] for r in trusted}
    for r in trusted:
        assert r["label"] == "clean" and r["kind"] == "image" and r["file_exists"] and r["expected_status"] == 200
        assert r["page"] == "" and r["markup"] == "list" and not r["in_url_list"] and not r["real_photo"]
    assert len(ground_truth) > len(trusted) > 0


def test_the_demo_server_serves_every_trusted_image_at_its_listed_url(server, demo_site, trusted, tmp_path):
    absolute = write_url_list(demo_site.root, server.base_url, tmp_path / "trusted.csv", listing=TRUSTED_LIST)
    sha = {server.base_url + r["url"]: r["sha256"] for r in trusted}
    rows = listed(absolute)
    assert [url for url, _ in rows] == [server.base_url + r["url"] for r in trusted]
    for url, _ in rows:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == ("image/png" if url.endswith(".png") else "image/jpeg")
            assert hashlib.sha256(response.read()).hexdigest() == sha[url]


def test_the_trusted_section_is_deterministic_and_leaves_the_pool_as_it_is(demo_site, tmp_path):
    without = build_site(tmp_path / "none", seed=demo_site.seed, pages=demo_site.pages, trusted=0)
    full, bare = tree_hashes(demo_site.root), tree_hashes(without.root)
    site_files = lambda hashes: {k: v for k, v in hashes.items() if k.startswith("site/")}  # noqa: E731
    pool = {k: v for k, v in site_files(full).items() if not k.startswith("site/trusted/")}
    assert pool == site_files(bare)  # every page and pool medium, byte for byte
    assert listed(without.url_list_csv) == listed(demo_site.url_list_csv) and listed(without.trusted_list_csv) == []
    gt = pq.read_table(demo_site.ground_truth).to_pylist()
    assert [r for r in gt if not r["trusted"]] == pq.read_table(without.ground_truth).to_pylist()
    more = build_site(tmp_path / "more", seed=demo_site.seed, pages=demo_site.pages, trusted=demo_site.n_trusted + 10)
    # the same seed draws the same trusted images first, whatever their number
    assert listed(more.trusted_list_csv)[: demo_site.n_trusted] == listed(demo_site.trusted_list_csv)


def test_trusted_photo_views_are_other_crops_of_the_site_photos_with_their_captions(tmp_path):
    from mmcurate.pipeline.demo.site import build_site, read_ground_truth
    from mmcurate.pipeline.demo.site.images import PHOTOS, photo

    manifest = build_site(tmp_path / "s", seed=2, pages=25, trusted=24, trusted_photo_views=2)
    rows = [r for r in read_ground_truth(manifest.root).to_pylist() if r["trusted"]]
    views = [r for r in rows if r["real_photo"]]
    assert len(rows) == 24 + 2 * len(PHOTOS) and len(views) == 2 * len(PHOTOS)
    assert {r["shown_text"] for r in views} == {photo(name)[1] for name in PHOTOS}
    assert all(r["label"] == "clean" and max(r["width"], r["height"]) <= 256 for r in views)
    pool = {r["sha256"] for r in read_ground_truth(manifest.root).to_pylist() if not r["trusted"]}
    assert not pool & {r["sha256"] for r in views}  # other views, not the pool's files
    without = build_site(tmp_path / "t", seed=2, pages=25, trusted=24)
    synthetic = [r["sha256"] for r in read_ground_truth(without.root).to_pylist() if r["trusted"]]
    assert synthetic == [r["sha256"] for r in rows if not r["real_photo"]]  # the synthetics do not move
