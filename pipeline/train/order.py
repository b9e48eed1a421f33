"""The epoch's global sample order and its partition into (rank, loader worker) consumers. Pure functions only.

Positions: a shard list with known per-shard sample counts defines ``N`` samples. For epoch ``e`` the shards are
permuted by ``(seed, e)`` and concatenated: that is the *stream order* ``O``. The *epoch order* ``G`` permutes
``O`` within consecutive blocks of ``block`` samples, each block by ``(seed, e, block index)``. ``G`` depends on
nothing but (shard counts, seed, epoch, block) — not on the world size — so progress through an epoch is a set of
``G`` positions, kept as sorted half-open intervals.

A consumer gets a contiguous run of the remaining positions, so it reads a contiguous run of ``O`` (whole shards,
sequentially, as streaming wants) and holds at most one block in memory to emit it in ``G`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

Interval = tuple[int, int]  # half-open [start, stop) of epoch-order positions


def total(intervals: Sequence[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def normalize(intervals: Sequence[Interval]) -> list[Interval]:
    """Sort, drop empty intervals and merge touching ones."""
    out: list[Interval] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            if a < out[-1][1]:
                raise ValueError(f"overlapping intervals at {a}: a position would be visited twice")
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def take(intervals: Sequence[Interval], n: int) -> tuple[list[Interval], list[Interval]]:
    """Split into the first ``n`` positions and the rest."""
    head: list[Interval] = []
    rest: list[Interval] = []
    for a, b in intervals:
        if n <= 0:
            rest.append((a, b))
        elif b - a <= n:
            head.append((a, b))
            n -= b - a
        else:
            head.append((a, a + n))
            rest.append((a + n, b))
            n = 0
    if n > 0:
        raise ValueError(f"asked for {n} positions more than the intervals hold")
    return head, rest


def split_even(intervals: Sequence[Interval], parts: int) -> list[list[Interval]]:
    """Contiguous split into ``parts`` pieces whose sizes differ by at most one (earlier pieces larger)."""
    n = total(intervals)
    sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
    pieces, rest = [], list(intervals)
    for size in sizes:
        piece, rest = take(rest, size)
        pieces.append(piece)
    return pieces


def assign(remaining: Sequence[Interval], world_size: int, loader_workers: int) -> list[list[list[Interval]]]:
    """``[rank][worker] -> intervals``: ranks get equal shares (±1), each rank's share is split over its loader
    workers. A pure function of its arguments, so every rank computes the same partition without talking."""
    per_worker = max(1, loader_workers)
    return [split_even(share, per_worker) for share in split_even(normalize(remaining), world_size)]


class EpochOrder:
    """Maps epoch-order positions to (shard, sample-within-shard) for one (counts, seed, epoch, block)."""

    def __init__(self, counts: Sequence[int], *, seed: int, epoch: int, block: int, shuffle_shards: bool = True):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.counts = [int(c) for c in counts]
        self.seed, self.epoch, self.block = int(seed), int(epoch), int(block)
        n_shards = len(self.counts)
        if shuffle_shards:
            self.shard_order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(n_shards)
        else:
            self.shard_order = np.arange(n_shards)
        ordered = np.array([self.counts[s] for s in self.shard_order], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(ordered)]).astype(np.int64)  # O offset of each ordered shard
        self.total = int(self.starts[-1])
        self._block_perm = lru_cache(maxsize=4)(self._make_block_perm)

    def block_perm(self, k: int) -> np.ndarray:
        return self._block_perm(k)

    def _make_block_perm(self, k: int) -> np.ndarray:
        n = min(self.block, self.total - k * self.block)
        if n <= 0:
            raise IndexError(f"block {k} is past the epoch's {self.total} samples")
        # a distinct stream per block: (seed, epoch, 1, k) never collides with the shard permutation's key
        return np.random.default_rng([self.seed, self.epoch, 1, k]).permutation(n)

    def stream_positions(self, start: int, stop: int) -> np.ndarray:
        """The stream (``O``) positions of epoch positions ``[start, stop)``, in epoch order."""
        out = []
        k = start // self.block
        while k * self.block < stop:
            base = k * self.block
            perm = self.block_perm(k)
            lo, hi = max(start, base), min(stop, base + len(perm))
            out.append(base + perm[lo - base : hi - base])
            k += 1
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def locate(self, o: int) -> tuple[int, int]:
        """Stream position -> (shard index in the original list, sample ordinal within that shard)."""
        i = int(np.searchsorted(self.starts, o, side="right")) - 1
        return int(self.shard_order[i]), int(o - self.starts[i])
