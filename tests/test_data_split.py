"""MMRec's split rule: per-user counts, determinism, and agreement with the shared sparse release."""

from __future__ import annotations

import numpy as np
import pytest

from tests._data_helpers import shared_dataset
from training.data.dataset import TEST, TRAIN, VALID
from training.data.mmrec import load_mmrec
from training.data.split import mmrec_split, split_counts


def _expected(n: int) -> tuple[int, int, int]:
    """The rule written out by hand, independently of split_counts' vectorised form."""
    if n < 3:
        return n, 0, 0
    if n < 10:
        return n - 2, 1, 1
    held = int(0.2 * n)
    return n - held, held - held // 2, held // 2


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 10, 14, 15, 19, 20, 25, 37, 100, 1001])
def test_split_counts_rule(n: int) -> None:
    t, v, s = split_counts(n)
    assert (int(t), int(v), int(s)) == _expected(n)


def test_mmrec_split_per_user_counts_and_shuffle() -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 60, 300)
    users = rng.permutation(np.repeat(np.arange(300), sizes))  # rows of a user need not be adjacent
    splits = mmrec_split(users, np.random.default_rng(1))
    assert splits.dtype == np.int8
    for u in range(300):
        got = tuple(int(((users == u) & (splits == s)).sum()) for s in (TRAIN, VALID, TEST))
        assert got == _expected(int(sizes[u]))
    assert (mmrec_split(users, np.random.default_rng(1)) == splits).all()
    assert (mmrec_split(users, np.random.default_rng(2)) != splits).any()


def test_held_out_rows_are_random_not_last() -> None:
    users = np.zeros(50, dtype=np.int64)
    held = np.zeros(50)
    for seed in range(40):
        held += mmrec_split(users, np.random.default_rng(seed)) != TRAIN
    assert (held > 0).sum() > 40  # almost every position gets held out under some seed


def test_rule_matches_shared_sparse_release() -> None:
    """ml-100k-mm-sparse was split by MMRec's rule: every user's counts must follow it."""
    ds = load_mmrec(shared_dataset("ml-100k-mm-sparse"))
    counts = np.stack([np.bincount(ds.users[ds.splits == s], minlength=ds.n_users) for s in (TRAIN, VALID, TEST)])
    n = counts.sum(axis=0)
    expected = np.stack(split_counts(n))
    assert (counts == expected).all()
    assert ds.counts() == {"train": 8216, "valid": 1326, "test": 1181}
