"""BPR training triples: every training interaction once per epoch, each with one uniform negative.

Why vectorised: a Python loop over 80k interactions per epoch costs more than the model step on
a 2-core CPU. The membership test "is item j in user u's training items?" is one `searchsorted`
over the sorted keys `u * n_items + i` of all training pairs (equivalently a sorted CSR), so a
whole epoch of negatives is drawn, checked and re-drawn (only the collisions) in a few array ops.

Why the RNG is derived from (seed, epoch) and not carried along: every DDP rank must draw the
same permutation and the same negatives (each rank then takes its slice), and a resumed run must
draw exactly what the uninterrupted run would have drawn at that epoch. Deriving a fresh
`numpy.random.Generator` from `(seed, epoch)` gives both without saving any sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Re-draw rounds before giving up on a collision; each round keeps only the still-colliding rows,
# so with a user who has seen a fraction f of the catalogue the expected leftover is f**rounds.
_MAX_ROUNDS = 1000


@dataclass(frozen=True)
class Triples:
    """One epoch's shuffled training triples (int64 arrays of equal length)."""

    users: np.ndarray
    pos: np.ndarray
    neg: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


class NegativeSampler:
    """Uniform negative sampling that never returns one of the user's training items.

    Parameters
    ----------
    users, items:
        int64 [n] the training interactions (duplicates allowed; they are counted once in the
        membership index but every row is one positive of the epoch).
    n_items:
        catalogue size; negatives are drawn from ``range(n_items)``.

    A user who has interacted with every item has no valid negative; for such users (only)
    the sampler returns an arbitrary item and counts them in `saturated_users`, because
    refusing to train on a whole dataset for one such user would be worse.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users and items must be 1-D of equal length, got {users.shape} and {items.shape}")
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"item rows must lie in [0, {n_items}), got [{items.min()}, {items.max()}]")
        self.users, self.items, self.n_items = users, items, int(n_items)
        self._keys = np.unique(users * self.n_items + items)  # sorted, distinct (user, item) keys
        n_users = int(users.max()) + 1 if len(users) else 0
        degree = np.bincount(self._keys // self.n_items, minlength=n_users)
        self._saturated = np.flatnonzero(degree >= self.n_items)

    @property
    def saturated_users(self) -> np.ndarray:
        """Users whose training items cover the whole catalogue (no valid negative exists)."""
        return self._saturated

    def is_train_item(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool [n]: whether (users[k], items[k]) is a training interaction."""
        keys = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        idx = np.searchsorted(self._keys, keys)
        idx = np.minimum(idx, len(self._keys) - 1)
        return self._keys[idx] == keys

    def negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform negative per entry of `users`, re-drawing only the collisions."""
        users = np.asarray(users, dtype=np.int64)
        neg = rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        todo = np.flatnonzero(self.is_train_item(users, neg))
        if len(self._saturated):
            todo = todo[~np.isin(users[todo], self._saturated)]
        for _ in range(_MAX_ROUNDS):
            if len(todo) == 0:
                return neg
            neg[todo] = rng.integers(0, self.n_items, size=len(todo), dtype=np.int64)
            todo = todo[self.is_train_item(users[todo], neg[todo])]
        raise RuntimeError(f"{len(todo)} negatives still collide after {_MAX_ROUNDS} rounds (users near-saturated)")

    def epoch(self, seed: int, epoch: int) -> Triples:
        """The epoch's triples: a permutation of all training interactions plus fresh negatives.

        Identical for identical (seed, epoch) in every process, which is what DDP sharding and
        exact resume rely on.
        """
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5A3B])
        order = rng.permutation(len(self.users))
        users = self.users[order]
        return Triples(users=users, pos=self.items[order], neg=self.negatives(users, rng))


def batch_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each global batch of an epoch of n triples.

    A trailing batch smaller than `world_size` is merged into the previous one, so that every
    rank gets at least one triple in every step (DDP needs all ranks to take the same number of
    steps, and an empty batch has no loss to back-propagate).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size < world_size or n < world_size:
        raise ValueError(
            f"every rank needs at least one triple per step: batch_size={batch_size} and {n} training "
            f"interactions must both be >= the world size {world_size}"
        )
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def shard(start: int, end: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous sub-slice of the global batch [start, end) (sizes differ by <= 1)."""
    n = end - start
    lo = start + (n * rank) // world_size
    hi = start + (n * (rank + 1)) // world_size
    return lo, hi
