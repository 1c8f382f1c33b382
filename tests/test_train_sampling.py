"""Negative sampler and batch sharding: the invariants the training loop relies on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.sampling import NegativeSampler, batch_bounds, shard


def _random_interactions(seed: int, n_users: int = 30, n_items: int = 25, density: float = 0.3):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    mask[0, :] = True  # a saturated user: has every item
    mask[1, :-1] = True  # a near-saturated user: exactly one valid negative (the last item)
    mask[1, -1] = False
    mask[2, 0] = True
    u, i = np.nonzero(mask)
    return u.astype(np.int64), i.astype(np.int64), n_items


@given(seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_negatives_never_hit_training_items(seed: int) -> None:
    u, i, n_items = _random_interactions(seed)
    s = NegativeSampler(u, i, n_items)
    trip = s.epoch(seed, epoch=3)
    ok = trip.users != 0  # user 0 has no valid negative at all
    assert not s.is_train_item(trip.users[ok], trip.neg[ok]).any()
    assert (trip.neg[trip.users == 1] == n_items - 1).all()
    assert ((trip.neg >= 0) & (trip.neg < n_items)).all()
    assert s.saturated_users.tolist() == [0]


def test_epoch_is_a_permutation_of_the_training_interactions_and_reproducible() -> None:
    u, i, n_items = _random_interactions(1)
    s = NegativeSampler(u, i, n_items)
    a, b, c = s.epoch(5, 0), s.epoch(5, 0), s.epoch(5, 1)
    assert len(a) == len(u)
    got = sorted(zip(a.users.tolist(), a.pos.tolist(), strict=True))
    assert got == sorted(zip(u.tolist(), i.tolist(), strict=True))
    for x, y in ((a.users, b.users), (a.pos, b.pos), (a.neg, b.neg)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.users, c.users)  # a new epoch reshuffles


def test_negatives_are_roughly_uniform_over_non_training_items() -> None:
    u = np.zeros(3, dtype=np.int64)
    i = np.array([0, 1, 2], dtype=np.int64)
    s = NegativeSampler(u, i, n_items=8)
    neg = s.negatives(np.zeros(50_000, dtype=np.int64), np.random.default_rng(0))
    counts = np.bincount(neg, minlength=8)
    assert counts[:3].sum() == 0
    np.testing.assert_allclose(counts[3:] / 50_000, 0.2, atol=0.01)


def test_membership_index_handles_duplicates_and_empty_input() -> None:
    s = NegativeSampler(np.array([0, 0, 1]), np.array([2, 2, 0]), n_items=3)
    assert s.is_train_item(np.array([0, 0, 1, 1]), np.array([2, 1, 0, 2])).tolist() == [True, False, True, False]
    assert len(s.negatives(np.array([], dtype=np.int64), np.random.default_rng(0))) == 0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="item rows"):
        NegativeSampler(np.array([0]), np.array([5]), n_items=3)
    with pytest.raises(ValueError, match="equal length"):
        NegativeSampler(np.array([0, 1]), np.array([0]), n_items=3)


@given(n=st.integers(1, 500), bs=st.integers(1, 64), world=st.integers(1, 4))
def test_batches_and_shards_cover_every_triple_once(n: int, bs: int, world: int) -> None:
    if bs < world or n < world:
        with pytest.raises(ValueError, match="rank"):
            batch_bounds(n, bs, world)
        return
    bounds = batch_bounds(n, bs, world)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    seen = []
    for s, e in bounds:
        assert e - s >= world  # every rank gets work in every step
        parts = [shard(s, e, r, world) for r in range(world)]
        sizes = [hi - lo for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1
        for lo, hi in parts:
            seen.extend(range(lo, hi))
    assert seen == list(range(n))
