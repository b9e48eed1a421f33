"""The epoch order and its partition: every position once, for any world size, before and after a resume."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.pipeline.train.order import EpochOrder, assign, normalize, split_even, take, total


def positions(intervals):
    return [p for a, b in intervals for p in range(a, b)]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 1), (3, 2), (4, 3)])
def test_assignment_covers_each_position_once(world, workers):
    parts = assign([(0, 1003)], world, workers)
    flat = [p for rank in parts for w in rank for p in positions(w)]
    assert sorted(flat) == list(range(1003))
    rank_sizes = [sum(total(w) for w in rank) for rank in parts]
    assert max(rank_sizes) - min(rank_sizes) <= 1


def test_resume_repartitions_the_remainder_for_another_world_size():
    rng = np.random.default_rng(0)
    first = assign([(0, 5000)], 4, 2)
    consumed, remaining = [], []
    for rank in first:
        for w in rank:
            n = int(rng.integers(0, total(w) + 1))
            head, rest = take(w, n)
            consumed += positions(head)
            remaining += rest
    second = assign(remaining, 3, 1)  # fewer ranks, fewer loader workers
    resumed = [p for rank in second for w in rank for p in positions(w)]
    assert sorted(consumed + resumed) == list(range(5000))
    assert not set(consumed) & set(resumed)


def test_normalize_merges_and_refuses_overlap():
    assert normalize([(5, 7), (0, 2), (2, 5), (9, 9)]) == [(0, 7)]
    with pytest.raises(ValueError, match="overlapping"):
        normalize([(0, 5), (4, 6)])
    assert [total(p) for p in split_even([(0, 3), (10, 14)], 3)] == [3, 2, 2]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    counts = [64, 64, 10, 64]
    a = EpochOrder(counts, seed=1, epoch=0, block=50)
    b = EpochOrder(counts, seed=1, epoch=0, block=50)
    c = EpochOrder(counts, seed=1, epoch=1, block=50)
    g_a = a.stream_positions(0, a.total)
    assert sorted(g_a.tolist()) == list(range(202))  # a permutation of the stream
    assert np.array_equal(g_a, b.stream_positions(0, b.total))
    assert not np.array_equal(g_a, c.stream_positions(0, c.total))
    # a sub-range maps to the same positions as the full range does
    assert np.array_equal(a.stream_positions(37, 140), g_a[37:140])
    # permutation only within blocks: position i stays within its block of 50
    assert all(o // 50 == i // 50 for i, o in enumerate(g_a.tolist()))
    located = [a.locate(o) for o in range(a.total)]
    assert sorted(located) == sorted((s, i) for s, n in enumerate(counts) for i in range(n))
