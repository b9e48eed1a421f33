"""Dedupe at scale: planted near-duplicate clusters in synthetic 64-bit hashes (1M and 4M) and in synthetic captions
(250k and 1M), through the stage's own Ray Data code (``perceptual.near_duplicates``, ``text.text_duplicates``:
bands, candidate pairs, verification, connected components, distances to the survivor, the records left).

    .venv/bin/python tests/bench/bench_dedupe.py [--quick] [--hashes 1000000,4000000] [--captions 250000,1000000]
                                                 [--radius 2]

* hashes: uniform random 64-bit values; 1 % of them are cluster centres with two copies, one bit flipped in each
  (distinct bits), so every pair of a cluster is within 2 bits (three planted pairs a cluster). No thumbnails: the
  hash decides. The radius is small because pigeonhole bands are 64 / (radius + 1) bits wide: at 4M uniform
  hashes, radius 2 (21-bit bands) makes ~10M random candidate pairs, radius 3 (16-bit bands) ~500M.
* captions: 12 words from a 20,000-word vocabulary; 1 % are cluster bases with two copies, one re-cased and
  re-punctuated (the same normalised text), one with a word appended (Jaccard of 5-character shingles ~0.9).
  Text method defaults (threshold 0.8, 128 permutations, false-negative weight 0.8); recall is over the planted pairs whose true Jaccard
  (computed exactly on the shingle sets) reaches the threshold.

Each size runs in its own process (its own local Ray, all CPUs), timed wall clock from start to end (Ray start-up
included; ``*_method_s`` is the dedupe call alone), memory sampled every 50 ms (harness.run_measured: ``tree`` is
the RSS summed over the process and Ray's processes, shared object-store pages counted once per process mapping
them; ``driver`` the process itself). A planted pair is recalled when both records end in one component (one is
dropped naming the other's survivor, or both name the same survivor).

Ratios first: ``<kind>_method_s_<big>_over_<small>`` (goal <= 5 for 4x the input: near n log n).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

_GOLDEN = 0x9E3779B97F4A7C15


def mix64(x):
    """splitmix64 of a uint64 numpy array: a deterministic stand-in for hashes of distinct images."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(_GOLDEN))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _keys_nodes(ids):
    import numpy as np

    from mmcurate.stages.dedupe.signatures import rank

    keys = [f"{i:012d}" for i in ids.tolist()]
    return keys, rank(keys, np.full(len(ids), np.nan), np.full(len(ids), np.nan))


def _hash_batch(batch, clusters: int):
    import numpy as np
    import pyarrow as pa

    ids = batch["id"].astype(np.uint64)
    planted = ids < np.uint64(3 * clusters)
    cluster, member = ids // np.uint64(3), ids % np.uint64(3)
    centre = mix64(cluster + np.uint64(1 << 40))
    bit_one = mix64(cluster + np.uint64(1 << 41)) % np.uint64(64)
    bit_two = (bit_one + np.uint64(1) + mix64(cluster + np.uint64(1 << 42)) % np.uint64(63)) % np.uint64(64)
    flip = np.where(member == 1, np.uint64(1) << bit_one,
                    np.where(member == 2, np.uint64(1) << bit_two, np.uint64(0)))
    hashes = np.where(planted, centre ^ flip, mix64(ids))
    keys, nodes = _keys_nodes(ids)
    return pa.table({"key": keys, "node": nodes, "phash": pa.array(hashes, pa.uint64()),
                     "thumbs": pa.nulls(len(ids), pa.binary())})


_VOCAB = 20_000
_WORDS = 12


def _vocabulary() -> list[str]:
    import random

    rng = random.Random(20_000)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(_VOCAB)]


def _captions(ids, clusters: int, vocab: list[str]) -> list[str]:
    import numpy as np

    ids = ids.astype(np.uint64)
    planted = ids < np.uint64(3 * clusters)
    base = np.where(planted, ids // np.uint64(3) + np.uint64(1 << 40), ids)
    words = mix64(base[:, None] * np.uint64(64) + np.arange(_WORDS + 1, dtype=np.uint64)[None, :]) % np.uint64(_VOCAB)
    out = []
    for i, row in zip(ids.tolist(), words.tolist()):
        text = " ".join(vocab[w] for w in row[:_WORDS])
        if i < 3 * clusters and i % 3 == 1:
            text = text.capitalize().replace(" ", ", ", 1) + "!"
        elif i < 3 * clusters and i % 3 == 2:
            text = f"{text} {vocab[row[_WORDS]]}"
        out.append(text)
    return out


def _caption_batch(batch, clusters: int):
    import pyarrow as pa

    from mmcurate.stages.dedupe.signatures import normalise_text

    keys, nodes = _keys_nodes(batch["id"])
    texts = [normalise_text(t) for t in _captions(batch["id"], clusters, _vocabulary())]
    return pa.table({"key": keys, "node": nodes, "text_norm": texts})


def _recall(drops, clusters: int) -> tuple[int, int]:
    """(planted pairs recalled, planted pairs), from the drop table (key -> survivor key)."""
    survivor = {}
    for batch in drops.iter_batches(batch_format="pyarrow"):
        survivor.update(zip(batch["key"].to_pylist(), batch["other"].to_pylist()))

    def component(i: int) -> str:
        key = f"{i:012d}"
        return survivor.get(key, key)

    recalled = 0
    for c in range(clusters):
        a, b, d = (component(3 * c + m) for m in range(3))
        recalled += (a == b) + (a == d) + (b == d)
    return recalled, 3 * clusters


def _true_jaccard_pairs(clusters: int, threshold: float) -> int:
    """Planted caption pairs whose exact shingle Jaccard reaches the threshold (the text method's target)."""
    import numpy as np

    from mmcurate.schemas.stage_configs import TextDedupeConfig
    from mmcurate.stages.dedupe.signatures import normalise_text
    from mmcurate.stages.dedupe.text import shingles

    cfg, vocab, count = TextDedupeConfig(), _vocabulary(), 0
    texts = [normalise_text(t) for t in _captions(np.arange(3 * clusters), clusters, vocab)]
    for c in range(clusters):
        sets = [set(shingles(texts[3 * c + m], cfg.shingle, cfg.ngram)) for m in range(3)]
        for x, y in ((0, 1), (0, 2), (1, 2)):
            count += len(sets[x] & sets[y]) / len(sets[x] | sets[y]) >= threshold
    return count


def child(kind: str, n: int, radius: int) -> None:
    import ray

    from mmcurate.schemas.stage_configs import TextDedupeConfig
    from mmcurate.stages.dedupe.perceptual import near_duplicates
    from mmcurate.stages.dedupe.shuffle import sort_shuffle
    from mmcurate.stages.dedupe.text import text_duplicates

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=f"/tmp/ray-bench-dedupe-{os.getpid()}")
    ray.data.DataContext.get_current().enable_progress_bars = False
    clusters = n // 100
    blocks = max(8, n // 100_000)
    source = ray.data.range(n, override_num_blocks=blocks)
    partitions = max(16, n // 50_000)
    with sort_shuffle(source):
        make = _hash_batch if kind == "phash" else _caption_batch
        nodes = source.map_batches(make, fn_kwargs={"clusters": clusters}, batch_format="numpy",
                                   batch_size=None).materialize()
        t0 = time.perf_counter()
        if kind == "phash":
            drops, left = near_duplicates(nodes, radius, None, partitions)
            target = 3 * clusters
        else:
            cfg = TextDedupeConfig(enabled=True)
            drops, left = text_duplicates(nodes, cfg, partitions)
            target = _true_jaccard_pairs(clusters, cfg.threshold)
        left_count, drop_count = left.count(), drops.count()
        seconds = time.perf_counter() - t0
        recalled, planted = _recall(drops, clusters)
    print(json.dumps({"method_s": seconds, "recalled": recalled, "planted": planted, "target": target,
                      "drops": drop_count, "left": left_count, "partitions": partitions}), flush=True)


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def measure(kind: str, n: int, radius: int, work: Path) -> dict:
    cmd = [str(harness.PYTHON), str(Path(__file__).resolve()), "--child", kind, "--n", str(n), "--radius", str(radius)]
    harness.log(f"{kind} {n}: {' '.join(cmd)}")
    run = harness.run_measured(cmd, work / f"{kind}-{n}", interval_s=0.2)
    if run.returncode != 0:
        raise SystemExit(f"{kind} {n} failed ({run.returncode}):\n{run.tail()}")
    result = json.loads(run.stdout.read_text().strip().splitlines()[-1])
    harness.log(f"{kind} {n}: {result}")
    return {**result, "seconds": run.seconds, "tree_peak": run.tree_peak_bytes, "driver_peak": run.driver_peak_bytes,
            "machine_peak": run.machine_peak_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k/200k hashes, 20k/80k captions")
    parser.add_argument("--hashes", default="1000000,4000000")
    parser.add_argument("--captions", default="250000,1000000")
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--work-dir")
    parser.add_argument("--child", choices=["phash", "minhash"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.radius)
        return 0
    if args.quick:
        args.hashes, args.captions = "50000,200000", "20000,80000"
    work = harness.work_dir(args.work_dir, "dedupe")
    figures: dict = {}
    for kind, sizes in (("phash", args.hashes), ("minhash", args.captions)):
        ns = [int(s) for s in sizes.split(",") if s]
        results = {n: measure(kind, n, args.radius, work) for n in ns}
        if len(ns) >= 2:
            small, big = ns[0], ns[-1]
            figures[f"{kind}_method_s_{_label(big)}_over_{_label(small)}"] = harness.ratio(
                results[big]["method_s"], results[small]["method_s"])
            figures[f"{kind}_wall_s_{_label(big)}_over_{_label(small)}"] = harness.ratio(
                results[big]["seconds"], results[small]["seconds"])
        for n, r in results.items():
            label = _label(n)
            figures[f"{kind}_{label}_recall"] = r["recalled"] / r["planted"]
            figures[f"{kind}_{label}_method_s"] = round(r["method_s"], 1)
            figures[f"{kind}_{label}_wall_s"] = round(r["seconds"], 1)
            figures[f"{kind}_{label}_tree_peak_mib"] = round(harness.mib(r["tree_peak"]))
            figures[f"{kind}_{label}_driver_peak_mib"] = round(harness.mib(r["driver_peak"]))
            figures[f"{kind}_{label}_machine_peak_mib"] = round(harness.mib(r["machine_peak"]))
            figures[f"{kind}_{label}_planted_pairs"] = r["planted"]
            if kind == "minhash":
                figures[f"{kind}_{label}_pairs_at_or_above_threshold"] = r["target"]
            figures[f"{kind}_{label}_drops"] = r["drops"]
    figures["radius"] = args.radius
    figures["cpus"] = os.cpu_count()
    figures["load_average"] = harness.loadavg()
    figures["code"] = harness.code_version()
    harness.print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
