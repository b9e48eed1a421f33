"""Candidate pairs from equal bucket keys (LSH bands, clusters), vectorised: every pair of rows that share a key,
generated a bounded chunk at a time so one crowded bucket does not build its whole pair list at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK_PAIRS = 2_000_000


def runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each run of equal values in ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.array([], np.int64), np.array([], np.int64)
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [len(sorted_keys)]])).astype(np.int64)
    return starts, lengths


def pairs_within_runs(starts: np.ndarray, lengths: np.ndarray,
                      chunk: int = CHUNK_PAIRS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i, j), i < j, of every two positions in one run, about ``chunk`` pairs at a time."""
    crowded = lengths > 1
    starts, lengths = starts[crowded], lengths[crowded]
    if len(starts) == 0:
        return
    # each position p of a run pairs with the positions after it in the run
    positions = _ragged_positions(starts, lengths)
    ends = np.repeat(starts + lengths, lengths)
    after = ends - positions - 1
    cumulative = np.cumsum(after)
    begin = 0
    while begin < len(positions):
        limit = (cumulative[begin - 1] if begin else 0) + chunk
        end = max(begin + 1, int(np.searchsorted(cumulative, limit, side="right")))
        counts = after[begin:end]
        total = int(counts.sum())
        if total:
            left = np.repeat(positions[begin:end], counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            yield left, left + offsets
        begin = end


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
