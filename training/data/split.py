"""MMRec's per-user random split, in one place so every producer of data splits the same way.

The rule (the one used for ml-100k-mm and the Amazon releases of the MMRec toolbox): each user's
interactions are shuffled; a user with fewer than 10 interactions gives one to valid, one to test
and the rest to train (n-2 / 1 / 1); otherwise int(0.2 n) are held out, ceil(half) to valid and
floor(half) to test. Users with fewer than 3 interactions cannot spare a held-out row without
losing their only training signal, so all their rows go to train.
"""

from __future__ import annotations

import numpy as np

from training.data.dataset import TEST, TRAIN, VALID

SMALL_USER_LIMIT = 10
HOLDOUT_FRACTION = 0.2


def split_counts(n: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) counts for users with n interactions each (vectorised over n)."""
    n = np.asarray(n, dtype=np.int64)
    held = np.where(n < SMALL_USER_LIMIT, 2, (HOLDOUT_FRACTION * n).astype(np.int64))
    held = np.where(n < 3, 0, held)
    valid = held - held // 2
    test = held // 2
    return n - held, valid, test


def mmrec_split(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int8 split label (TRAIN/VALID/TEST) for each interaction, aligned with ``users``.

    Parameters
    ----------
    users:
        int [n] user row of each interaction (any order; rows of one user need not be adjacent).
    rng:
        Source of the per-user shuffle; the same seed gives the same split.
    """
    users = np.asarray(users, dtype=np.int64)
    n = len(users)
    splits = np.full(n, TRAIN, dtype=np.int8)
    if n == 0:
        return splits
    # A random permutation followed by a stable sort on user gives each user's rows in random order.
    perm = rng.permutation(n)
    order = perm[np.argsort(users[perm], kind="stable")]
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)  # position of each row within its user's shuffled list
    n_train, n_valid, _ = split_counts(sizes)
    n_train_r = np.repeat(n_train, sizes)
    n_valid_r = np.repeat(n_valid, sizes)
    labels = np.where(rank < n_train_r, TRAIN, np.where(rank < n_train_r + n_valid_r, VALID, TEST))
    splits[order] = labels.astype(np.int8)
    return splits
