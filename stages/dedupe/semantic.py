"""Semantic near-duplicates, SemDeDup (Abbas et al. 2023): spherical k-means (faiss) on the records' unit-norm
embeddings, then, inside each cluster, every pair whose cosine similarity exceeds ``1 - eps``.

k-means trains on the driver on a sample chosen by a hash of the key (at most ``sample`` embeddings, sorted by
key, faiss on one thread: the same records give the same centroids whatever the input order or the number of
workers); assigning every record to its nearest centroid and the pairs inside clusters run in the workers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from mmcurate.schemas.stage_configs import SemanticDedupeConfig
from mmcurate.stages.dedupe.pairs import runs
from mmcurate.stages.dedupe.shuffle import by_partition, stable_hash

PAIR_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string()), pa.field("cosine", pa.float64())])
_BLOCK = 2048  # rows of a cluster's similarity matrix computed at once


def unit_rows(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    size = array.type.list_size
    x = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, size)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


def _sampled(table: pa.Table, keep_below: int) -> pa.Table:
    chosen = stable_hash(table["key"]) % np.uint64(1 << 32) < np.uint64(keep_below)
    return table.filter(pa.array(chosen)).select(["key", "embedding"])


def centroids(embedded: Any, n: int, cfg: SemanticDedupeConfig) -> np.ndarray:
    import faiss

    fraction = min(1.0, cfg.sample / max(n, 1))
    keep_below = min(1 << 32, int(math.ceil(fraction * (1 << 32))))
    parts = list(embedded.map_batches(_sampled, fn_kwargs={"keep_below": keep_below}, batch_format="pyarrow")
                 .iter_batches(batch_format="pyarrow"))
    sample = pa.concat_tables(parts).sort_by("key") if parts else None
    if sample is None or sample.num_rows == 0:
        raise RuntimeError("semantic dedupe: no embedding in the k-means sample")
    x = unit_rows(sample["embedding"])
    k = min(cfg.clusters or max(1, round(math.sqrt(n))), len(x))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one thread: the same sample gives the same centroids bit for bit
    try:
        kmeans = faiss.Kmeans(x.shape[1], k, niter=cfg.iterations, seed=cfg.seed, spherical=True, verbose=False)
        kmeans.train(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return kmeans.centroids


def _assign(table: pa.Table, centres: np.ndarray) -> pa.Table:
    x = unit_rows(table["embedding"])
    cluster = np.argmax(x @ centres.T, axis=1) if len(x) else np.array([], np.int64)
    return pa.table({"node": table["node"], "cluster": pa.array(cluster.astype(np.int64))})


def _cluster_pairs(table: pa.Table, threshold: float) -> pa.Table:
    order = np.argsort(table["cluster"].to_numpy(), kind="stable")
    clusters = table["cluster"].to_numpy()[order]
    nodes = np.asarray(table["node"].to_numpy(zero_copy_only=False), dtype=object)[order]
    x = unit_rows(table["embedding"].take(pa.array(order))) if table.num_rows else np.zeros((0, 1), np.float32)
    out = []
    starts, lengths = runs(clusters)
    for start, length in zip(starts.tolist(), lengths.tolist()):
        block = x[start:start + length]
        for top in range(0, length, _BLOCK):
            sims = block[top:top + _BLOCK] @ block.T
            i, j = np.nonzero(sims > threshold)
            i = i + top
            keep = i < j
            i, j = i[keep], j[keep]
            out.append(pa.table({"a": pa.array(nodes[start + i], pa.string()),
                                 "b": pa.array(nodes[start + j], pa.string()),
                                 "cosine": pa.array(sims[i - top, j].astype(np.float64))}))
    return pa.concat_tables(out) if out else PAIR_SCHEMA.empty_table()


def semantic_duplicates(nodes: Any, cfg: SemanticDedupeConfig, partitions: int) -> tuple[Any, Any]:
    """(drops, the nodes left): components of the within-cluster pairs above ``1 - eps``."""
    from mmcurate.stages.dedupe.groups import empty, linked, split

    embedded, _ = split(nodes, "embedding")
    embedded = embedded.materialize()
    n = embedded.count()
    if n < 2:
        return empty(), nodes
    centres = centroids(embedded, n, cfg)
    assigned = embedded.map_batches(lambda t: pa.Table.from_arrays(
        [t["node"], _assign(t, centres)["cluster"], t["embedding"]], names=["node", "cluster", "embedding"]),
        batch_format="pyarrow")
    pairs = by_partition(assigned, "cluster", partitions, _cluster_pairs, threshold=1.0 - cfg.eps)

    def measure(table: pa.Table) -> tuple[list[float], list[str], list[bool]]:
        cosine = (unit_rows(table["m_embedding"]) * unit_rows(table["s_embedding"])).sum(axis=1).astype(float)
        return cosine.tolist(), [f"embedding cosine {c:.4f}" for c in cosine], [c > 1 - cfg.eps for c in cosine]

    return linked(nodes, pairs, ["embedding"], "semantic_duplicate", "semantic", measure, partitions)
