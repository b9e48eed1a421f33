"""Perceptual near-duplicates: 64-bit pHashes within a Hamming radius r, found without comparing all pairs.

Pigeonhole bands: cut the 64 bits into r + 1 bands; two hashes that differ in at most r bits agree exactly on at
least one band, so grouping by (band, band value) finds every pair within the radius, with no miss. Each pair is
kept in the first band it agrees on only (no repeats), and only if its true distance is within r. With
thumbnails (``signatures.thumbs``) a pair must also pass the tiny-image test (``thumbnail_rms``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mmcurate.stages.dedupe.pairs import pairs_within_runs, runs
from mmcurate.stages.dedupe.shuffle import by_partition, join
from mmcurate.stages.dedupe.signatures import THUMB_BYTES

PAIR_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string()), pa.field("hamming", pa.int32())])


def band_masks(radius: int) -> list[tuple[int, int]]:
    """(shift, width) of each of the radius + 1 bands covering the 64 bits (widths differ by at most one)."""
    bands = radius + 1
    widths = [64 // bands + (i < 64 % bands) for i in range(bands)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    return list(zip(shifts, widths))


def _band_value(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    return (hashes >> np.uint64(shift)) & mask


def band_rows(table: pa.Table, radius: int) -> pa.Table:
    """One row per (record, band): the bucket it falls in (band number and value folded into one uint64)."""
    hashes = table["phash"].to_numpy(zero_copy_only=False).astype(np.uint64)
    parts = []
    for i, (shift, width) in enumerate(band_masks(radius)):
        value = _band_value(hashes, shift, width)
        # the band number in the top bits keeps equal values of two bands in two buckets
        bucket = value | (np.uint64(i) << np.uint64(58)) if width <= 58 else value ^ np.uint64(i)
        parts.append(pa.table({"bucket": pa.array(bucket), "band": pa.array(np.full(len(hashes), i, np.int8)),
                               "node": table["node"], "phash": table["phash"]}))
    return pa.concat_tables(parts)


def _bucket_pairs(table: pa.Table, radius: int) -> pa.Table:
    order = np.argsort(table["bucket"].to_numpy(), kind="stable")
    buckets = table["bucket"].to_numpy()[order]
    bands = table["band"].to_numpy()[order]
    hashes = table["phash"].to_numpy().astype(np.uint64)[order]
    nodes = np.asarray(table["node"].to_numpy(zero_copy_only=False), dtype=object)[order]
    masks = band_masks(radius)
    out = []
    for i, j in pairs_within_runs(*runs(buckets)):
        xor = hashes[i] ^ hashes[j]
        distance = np.bitwise_count(xor)
        keep = distance <= radius
        # the pair's first agreeing band: a later band that also agrees would find it again
        band = bands[i]
        for b, (shift, width) in enumerate(masks):
            agrees = _band_value(xor, shift, width) == 0
            keep &= ~(agrees & (b < band))
        i, j = i[keep], j[keep]
        out.append(pa.table({"a": pa.array(nodes[i], pa.string()), "b": pa.array(nodes[j], pa.string()),
                             "hamming": pa.array(distance[keep].astype(np.int32))}))
    return pa.concat_tables(out) if out else PAIR_SCHEMA.empty_table()


def hash_pairs(nodes: Any, radius: int, partitions: int) -> Any:
    """Every pair of ``nodes`` rows (``node``, ``phash``) within ``radius`` bits, once: ``(a, b, hamming)``."""
    bands = nodes.select_columns(["node", "phash"]).map_batches(band_rows, fn_kwargs={"radius": radius},
                                                                 batch_format="pyarrow")
    return by_partition(bands, "bucket", partitions, _bucket_pairs, radius=radius)


def thumbnail_rms(a: bytes, b: bytes) -> float:
    """The tiny-image distance of two records: RMS difference (0-255 scale) of one's whole-image thumbnail and
    the other's crop thumbnails, the smallest over crops and over which of the two is the crop."""
    ta = np.frombuffer(a, np.uint8).reshape(-1, THUMB_BYTES).astype(np.float32)
    tb = np.frombuffer(b, np.uint8).reshape(-1, THUMB_BYTES).astype(np.float32)
    one = np.sqrt(((tb - ta[0]) ** 2).mean(axis=1)).min()
    other = np.sqrt(((ta - tb[0]) ** 2).mean(axis=1)).min()
    return float(min(one, other))



def _rms_column(table: pa.Table) -> pa.Table:
    values = [None if x is None or y is None else thumbnail_rms(x, y)
              for x, y in zip(table["thumbs_a"].to_pylist(), table["thumbs_b"].to_pylist())]
    return table.drop_columns(["thumbs_a", "thumbs_b"]).append_column("rms", pa.array(values, pa.float64()))


def with_thumbnail_rms(pairs: Any, nodes: Any, a: str, b: str, partitions: int) -> Any:
    """``pairs`` with ``rms``, the tiny-image distance of the nodes in columns ``a`` and ``b`` (null without
    thumbnails)."""
    thumbs = nodes.select_columns(["node", "thumbs"])
    joined = join(pairs, thumbs.rename_columns({"node": "_na", "thumbs": "thumbs_a"}), a, "_na", partitions)
    joined = join(joined, thumbs.rename_columns({"node": "_nb", "thumbs": "thumbs_b"}), b, "_nb", partitions)
    return joined.drop_columns(["_na", "_nb"]).map_batches(_rms_column, batch_format="pyarrow")


def near_duplicates(nodes: Any, radius: int, max_rms: float | None, partitions: int) -> tuple[Any, Any]:
    """(drops, the nodes left): components of the pairs within ``radius`` bits (and ``max_rms``), the survivor of
    each kept, the others ``near_duplicate`` of it."""
    import pyarrow.compute as pc

    from mmcurate.stages.dedupe.groups import linked, split

    hashed, _ = split(nodes, "phash")
    pairs = hash_pairs(hashed, radius, partitions)
    if max_rms is not None:
        pairs = with_thumbnail_rms(pairs, hashed, "a", "b", partitions).map_batches(
            lambda t: t.filter(pc.fill_null(pc.less_equal(t["rms"], max_rms), True)), batch_format="pyarrow")

    def measure(table: pa.Table) -> tuple[list[float], list[str], list[bool]]:
        xor = pc.bit_wise_xor(table["m_phash"], table["s_phash"]).to_numpy(zero_copy_only=False)
        bits = np.bitwise_count(xor.astype(np.uint64)).astype(int).tolist()
        texts, within = [], []
        for d, x, y in zip(bits, table["m_thumbs"].to_pylist(), table["s_thumbs"].to_pylist()):
            rms = thumbnail_rms(x, y) if (max_rms is not None and x is not None and y is not None) else None
            texts.append(f"phash hamming {d}" + (f", thumbnail rms {rms:.1f}" if rms is not None else ""))
            within.append(d <= radius and (rms is None or rms <= max_rms))
        return [float(d) for d in bits], texts, within

    return linked(nodes, pairs, ["phash", "thumbs"], "near_duplicate", "phash", measure, partitions)
