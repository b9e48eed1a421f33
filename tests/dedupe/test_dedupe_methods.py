"""Each dedupe method on real decoded photos and real text, without Ray: the functions the workers run on one
partition's Arrow table."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from dedupe_helpers import SAME_PIXELS, cropped, decoded, jpeg, photos, record, table, variants

from mmcurate.schemas.stage_configs import TextDedupeConfig
from mmcurate.stages.dedupe.drops import detail, eval_item_of, survivor_of
from mmcurate.stages.dedupe.groups import _exact_partition
from mmcurate.stages.dedupe.pairs import pairs_within_runs, runs
from mmcurate.stages.dedupe.perceptual import _bucket_pairs, band_masks, band_rows, thumbnail_rms
from mmcurate.stages.dedupe.semantic import _cluster_pairs
from mmcurate.stages.dedupe.signatures import (
    decode_image,
    image_signature,
    key_of,
    normalise_text,
    pixel_digest,
    rank,
    signatures,
    thumbnail_crops,
)
from mmcurate.stages.dedupe.text import _band_rows, _bucket_candidates, _verified, jaccard, lsh_shape, minhashes

CROPS = thumbnail_crops(0.08)


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    return {name: jpeg(image) for name, image in photos().items()}


def _sign(data: bytes) -> tuple[bytes, int, bytes]:
    image = decode_image(data)
    return (pixel_digest(image), *image_signature(image, CROPS))


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_exact_pixels_match_a_renamed_or_lossless_copy_and_a_jpeg_reencode_only_when_its_pixels_are_identical(
        originals):
    checked = 0
    for name, original in originals.items():
        digest = _sign(original)[0]
        for variant, data in variants(original).items():
            assert (_sign(data)[0] == digest) == (variant in SAME_PIXELS), (name, variant)
        # the same encoder settings again: the bytes may or may not come out the same, and the digest follows the
        # pixels, not the bytes
        again = jpeg(decoded(original))
        same = np.array_equal(np.asarray(decoded(again)), np.asarray(decoded(original)))
        assert (_sign(again)[0] == digest) == same
        checked += 1
    assert checked == len(originals) == 36


def test_reencoded_and_resized_copies_are_perceptual_matches_and_different_photos_are_not(originals):
    radius, max_rms = 12, 6.0
    signed = {name: _sign(data) for name, data in originals.items()}
    found, copies = 0, 0
    for name, original in originals.items():
        for variant in ("jpeg_q60", "resized"):
            _, phash, thumbs = _sign(variants(original)[variant])
            copies += 1
            bits, rms = _bits(phash, signed[name][1]), thumbnail_rms(thumbs, signed[name][2])
            found += bits <= radius and rms <= max_rms
    assert found / copies >= 0.95, (found, copies)
    for (a, sa), (b, sb) in itertools.combinations(signed.items(), 2):
        assert not (_bits(sa[1], sb[1]) <= radius and thumbnail_rms(sa[2], sb[2]) <= max_rms), (a, b)


def test_a_copy_cropped_by_five_percent_lines_up_with_its_original_in_the_thumbnail_crops(originals):
    for name, original in originals.items():
        copy = jpeg(cropped(decoded(original), 0.05))
        assert thumbnail_rms(_sign(copy)[2], _sign(original)[2]) < 2.0, name
    # the whole-image thumbnails alone do not line up: the crop search is what finds it
    whole = [thumbnail_rms(_sign(jpeg(cropped(decoded(o), 0.05)))[2][:768], _sign(o)[2][:768])
             for o in originals.values()]
    assert max(whole) > 6.0


def test_pigeonhole_bands_find_every_pair_within_the_radius_and_each_pair_once():
    rng = np.random.default_rng(7)
    radius = 3
    base = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    planted = []
    for i in range(0, 3000, 10):  # copies 0 to radius + 2 bits away, some just outside the radius
        flips = rng.choice(64, size=int(rng.integers(0, radius + 3)), replace=False)
        planted.append(base[i] ^ np.uint64(sum(1 << int(f) for f in flips)))
    hashes = np.concatenate([base, np.array(planted, np.uint64)])
    nodes = [f"n{i:05d}" for i in range(len(hashes))]
    rows = band_rows(pa.table({"node": nodes, "phash": pa.array(hashes, pa.uint64())}), radius)
    found = _bucket_pairs(rows, radius)
    got = {tuple(sorted(p)) for p in zip(found["a"].to_pylist(), found["b"].to_pylist())}
    assert len(got) == found.num_rows  # no pair twice, though many agree on more than one band
    xor = hashes[:, None] ^ hashes[None, :]
    close = np.argwhere(np.triu(np.bitwise_count(xor) <= radius, k=1))
    expected = {tuple(sorted((nodes[i], nodes[j]))) for i, j in close}
    assert got == expected and len(expected) >= 150
    assert sum(w for _, w in band_masks(radius)) == 64


def test_pairs_are_generated_in_chunks_without_changing_them():
    keys = np.sort(np.random.default_rng(1).integers(0, 40, 500))
    whole = {(int(i), int(j)) for a, b in pairs_within_runs(*runs(keys), chunk=10**9) for i, j in zip(a, b)}
    chunked = [(int(i), int(j)) for a, b in pairs_within_runs(*runs(keys), chunk=37) for i, j in zip(a, b)]
    assert len(chunked) == len(set(chunked)) and set(chunked) == whole
    assert whole == {(i, j) for i in range(500) for j in range(i + 1, 500) if keys[i] == keys[j]}


def test_survivor_order_is_score_then_resolution_then_key():
    nodes = rank(["b", "a", "c", "d", "e"], np.array([0.3, 0.3, 0.9, np.nan, 0.3]),
                 np.array([100, 100, 10, 10**6, 400]))
    assert [key_of(n) for n in sorted(nodes)] == ["c", "e", "a", "b", "d"]
    assert rank(["k"], np.array([-0.5]), np.array([1]))[0] > rank(["k"], np.array([0.5]), np.array([1]))[0]


def test_a_person_accepted_record_survives_before_any_score():
    nodes = rank(["a", "b", "c"], np.array([0.9, 0.1, np.nan]), np.array([10**6, 1, 1]), [False, True, False])
    assert [key_of(n) for n in sorted(nodes)] == ["b", "a", "c"]


def test_exact_groups_keep_the_best_ranked_record_and_name_it(originals):
    original = originals["chelsea"]
    rows = table([record("small", jpeg(decoded(original).resize((120, 90)))),
                  record("orig", original, score=0.2), record("png", variants(original)["png"], score=0.31),
                  record("renamed", original), record("other", originals["coffee"])])
    sigs = signatures(rows, score="clip_score.*_text", resolution=True, pixels=True, samples=False, text=False,
                      phash=True, crops=CROPS, embedding=False)
    drops = _exact_partition(sigs.select(["node", "pixels"]), column="pixels", reason="duplicate",
                             method="exact_pixels", measures="exact pixels")
    keys = dict(zip(rows["key"].to_pylist(), [r["url"].rsplit("/", 1)[1] for r in rows.to_pylist()]))
    named = {keys[k]: keys[o] for k, o in zip(drops["key"].to_pylist(), drops["other"].to_pylist())}
    assert named == {"orig": "png", "renamed": "png"}  # the highest CLIP score wins among the same pixels
    assert survivor_of(drops["detail"][0].as_py()) in keys
    # a person's "match" outranks the score: the labels stage's human_match column
    people = rows.append_column("human_match", pa.array([None, None, None, True, False], pa.bool_()))
    sigs = signatures(people, score="clip_score.*_text", resolution=True, pixels=True, samples=False, text=False,
                      phash=False, crops=None, embedding=False)
    drops = _exact_partition(sigs.select(["node", "pixels"]), column="pixels", reason="duplicate",
                             method="exact_pixels", measures="exact pixels")
    named = {keys[k]: keys[o] for k, o in zip(drops["key"].to_pylist(), drops["other"].to_pylist())}
    assert named == {"orig": "renamed", "png": "renamed"}


def test_normalised_text_and_minhash_find_near_duplicate_captions():
    assert normalise_text("  A Red—Circle,  on   a BLUE background!! ") == "a red circle on a blue background"
    assert normalise_text("ｆｕｌｌ width") == "full width" and normalise_text("...") is None
    cfg = TextDedupeConfig(enabled=True, threshold=0.7)
    texts = ["the quick brown fox jumps over the lazy dog near the river bank",
             "The quick brown fox jumps over the lazy dog, near the river bank!",
             "the quick brown fox jumped over the lazy dog near the river bank",
             "an astronaut in a white suit stands beside a flag on the moon",
             "a cup of coffee with latte art on a wooden table"]
    norms = [normalise_text(t) for t in texts]
    sig = minhashes(norms, cfg)
    similarity = jaccard(sig[:, None, :].repeat(5, 1).reshape(25, -1), np.tile(sig, (5, 1))).reshape(5, 5)
    assert similarity[0, 1] == 1.0 and similarity[0, 2] >= 0.7 and similarity[0, 3] < 0.2
    nodes = [f"n{i}" for i in range(5)]
    signed = pa.table({"node": nodes, "minhash": [row.tobytes() for row in sig]})
    bands, rows = lsh_shape(cfg)
    candidates = _bucket_candidates(_band_rows(signed, bands, rows, cfg.num_perm))
    pairs = {tuple(sorted(p)) for p in zip(candidates["a"].to_pylist(), candidates["b"].to_pylist())}
    assert {("n0", "n1"), ("n0", "n2"), ("n1", "n2")} <= pairs and ("n0", "n3") not in pairs
    by_node = dict(zip(nodes, signed["minhash"].to_pylist()))
    listed = sorted(pairs)
    verified = _verified(pa.table({"a": [a for a, _ in listed], "b": [b for _, b in listed],
                                   "minhash_a": [by_node[a] for a, _ in listed],
                                   "minhash_b": [by_node[b] for _, b in listed]}), cfg.threshold, cfg.num_perm)
    assert {tuple(p) for p in zip(verified["a"].to_pylist(), verified["b"].to_pylist())} >= {("n0", "n1")}


def test_within_a_cluster_only_pairs_above_one_minus_eps_are_linked():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 32)).astype(np.float32)
    x[1] = x[0] + 0.01 * rng.normal(size=32)  # a near copy of 0
    x[4] = x[3] + 0.02 * rng.normal(size=32)  # of 3, but in another cluster
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32)
    got = _cluster_pairs(pa.table({"node": [f"n{i}" for i in range(6)], "cluster": [0, 0, 0, 1, 2, 1],
                                   "embedding": embedding}), threshold=0.95)
    assert {tuple(sorted(p)) for p in zip(got["a"].to_pylist(), got["b"].to_pylist())} == {("n0", "n1")}
    assert got["cosine"][0].as_py() > 0.99


def test_a_detail_names_the_survivor_or_the_eval_item_for_explain_to_read():
    text = detail("near_duplicate", "3f2a9c01aa", "phash hamming 3, thumbnail rms 1.2")
    assert text == "near_duplicate of 3f2a9c01aa (phash hamming 3, thumbnail rms 1.2)"
    assert survivor_of(text) == "3f2a9c01aa" and survivor_of("image too small") is None
    assert eval_item_of(detail("eval_contamination", "eval-0.tar:x/y.jpg", "exact pixels")) == "eval-0.tar:x/y.jpg"

