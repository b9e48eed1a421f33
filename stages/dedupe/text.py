"""Near-duplicate texts: MinHash signatures (datasketch) of each normalised text's shingles, LSH bands (b bands of
r rows, the (b, r) datasketch's ``MinHashLSH`` picks for the threshold: a pair of Jaccard similarity s shares a
band with probability 1 - (1 - s^r)^b), candidate pairs from equal band values, kept when their estimated
Jaccard similarity (equal MinHash slots) reaches the threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mmcurate.schemas.stage_configs import TextDedupeConfig
from mmcurate.stages.dedupe.pairs import pairs_within_runs, runs
from mmcurate.stages.dedupe.shuffle import by_partition, join

SCHEME = "affine32"  # datasketch's 32-bit MinHash values: 4 bytes a slot
CANDIDATE_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])
_FNV = np.uint64(0x100000001B3)


def lsh_shape(cfg: TextDedupeConfig) -> tuple[int, int]:
    """(bands, rows per band) datasketch chooses for the threshold and the weight of false negatives."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=lsh_weights(cfg))
    return lsh.b, lsh.r


def lsh_weights(cfg: TextDedupeConfig) -> tuple[float, float]:
    return 1 - cfg.false_negative_weight, cfg.false_negative_weight


def shingles(text: str, kind: str, n: int) -> list[bytes]:
    if kind == "word":
        words = text.split()
        grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
    else:
        grams = [text[i:i + n] for i in range(max(1, len(text) - n + 1))]
    return [g.encode("utf-8") for g in set(grams)]


def minhashes(texts: list[str], cfg: TextDedupeConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash values."""
    from datasketch import MinHash

    if not texts:
        return np.zeros((0, cfg.num_perm), np.uint32)
    signatures = MinHash.bulk([shingles(t, cfg.shingle, cfg.ngram) for t in texts], num_perm=cfg.num_perm,
                              seed=cfg.seed, scheme=SCHEME)
    return np.stack([m.hashvalues for m in signatures]).astype(np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows of two signature matrices (the fraction of equal slots)."""
    return (a == b).mean(axis=1)


def _with_minhash(table: pa.Table, cfg: TextDedupeConfig) -> pa.Table:
    values = minhashes(table["text_norm"].to_pylist(), cfg)
    return pa.table({"node": table["node"], "minhash": pa.array([row.tobytes() for row in values], pa.binary())})


def _band_rows(table: pa.Table, bands: int, rows: int, num_perm: int) -> pa.Table:
    values = np.frombuffer(b"".join(table["minhash"].to_pylist()), np.uint32).reshape(-1, num_perm)
    parts = []
    for band in range(bands):
        bucket = np.full(len(values), np.uint64(band) * _FNV, np.uint64)
        for column in values[:, band * rows:(band + 1) * rows].astype(np.uint64).T:
            bucket = (bucket ^ column) * _FNV  # FNV-1a over the band's slots (uint64 wraps by design)
        parts.append(pa.table({"bucket": pa.array(bucket), "node": table["node"]}))
    return pa.concat_tables(parts)


def _bucket_candidates(table: pa.Table) -> pa.Table:
    order = np.argsort(table["bucket"].to_numpy(), kind="stable")
    nodes = np.asarray(table["node"].to_numpy(zero_copy_only=False), dtype=object)[order]
    out = []
    for i, j in pairs_within_runs(*runs(table["bucket"].to_numpy()[order])):
        a, b = nodes[i], nodes[j]
        swap = a < b
        out.append(pa.table({"a": pa.array(np.where(swap, b, a), pa.string()),
                             "b": pa.array(np.where(swap, a, b), pa.string())}))
    return pa.concat_tables(out) if out else CANDIDATE_SCHEMA.empty_table()


def _unique(table: pa.Table) -> pa.Table:
    return table.group_by(["a", "b"]).aggregate([]).select(["a", "b"])


def _verified(table: pa.Table, threshold: float, num_perm: int) -> pa.Table:
    def matrix(column: str) -> np.ndarray:
        return np.frombuffer(b"".join(table[column].to_pylist()), np.uint32).reshape(-1, num_perm)

    similarity = jaccard(matrix("minhash_a"), matrix("minhash_b")) if table.num_rows else np.zeros(0)
    keep = similarity >= threshold
    return pa.table({"a": table["a"].filter(pa.array(keep)), "b": table["b"].filter(pa.array(keep)),
                     "jaccard": pa.array(similarity[keep])})


def candidate_pairs(signed: Any, cfg: TextDedupeConfig, partitions: int) -> Any:
    """Distinct ``(a, b)`` node pairs sharing an LSH band, ``a > b``."""
    bands, rows = lsh_shape(cfg)
    banded = signed.map_batches(_band_rows, fn_kwargs={"bands": bands, "rows": rows, "num_perm": cfg.num_perm},
                                batch_format="pyarrow")
    candidates = by_partition(banded, "bucket", partitions, _bucket_candidates)
    # the same pair found in two bands lands in two partitions: meet again by the pair's larger node to count once
    return by_partition(candidates, "a", partitions, _unique)


def similar_pairs(signed: Any, cfg: TextDedupeConfig, partitions: int) -> Any:
    """Candidate pairs whose estimated Jaccard similarity reaches the threshold: ``(a, b, jaccard)``."""
    side = signed.select_columns(["node", "minhash"])
    joined = join(candidate_pairs(signed, cfg, partitions),
                  side.rename_columns({"node": "_na", "minhash": "minhash_a"}), "a", "_na", partitions)
    joined = join(joined, side.rename_columns({"node": "_nb", "minhash": "minhash_b"}), "b", "_nb", partitions)
    return joined.map_batches(_verified, fn_kwargs={"threshold": cfg.threshold, "num_perm": cfg.num_perm},
                              batch_format="pyarrow")


def text_duplicates(nodes: Any, cfg: TextDedupeConfig, partitions: int) -> tuple[Any, Any]:
    """(drops, the nodes left): components of the texts at or above the Jaccard threshold."""
    from mmcurate.stages.dedupe.groups import linked, split

    texted, _ = split(nodes, "text_norm")
    signed = texted.map_batches(_with_minhash, fn_kwargs={"cfg": cfg}, batch_format="pyarrow").materialize()

    def measure(table: pa.Table) -> tuple[list[float], list[str], list[bool]]:
        def matrix(column: str) -> np.ndarray:
            return np.frombuffer(b"".join(table[column].to_pylist()), np.uint32).reshape(-1, cfg.num_perm)

        similarity = jaccard(matrix("m_minhash"), matrix("s_minhash")).astype(float)
        return (similarity.tolist(), [f"minhash jaccard {s:.3f}" for s in similarity],
                [s >= cfg.threshold for s in similarity])

    return linked(nodes, similar_pairs(signed, cfg, partitions), ["minhash"], "text_duplicate", "minhash", measure,
                  partitions, payload_nodes=signed)
