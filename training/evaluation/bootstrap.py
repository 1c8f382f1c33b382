"""Paired per-user bootstrap of the difference between two models' test metrics.

Why per user and paired: two models are evaluated on the same users, and most of the spread of a test
Recall@20 comes from which users happen to be in the test split, not from the models. Resampling users
(with replacement) and recomputing the MEAN DIFFERENCE keeps each user's two numbers together, so the
interval measures how sure we are that one model beats the other on users like these, which an interval
per model (or a t-test over a handful of seeds) cannot tell.

Several seeds per model are pooled by averaging each user's difference over the seeds first (seed s of
model A is paired with seed s of model B only by position; each model's seeds are exchangeable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """mean(A - B) over users (seed-averaged) with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    base: float  # mean of B, for the relative change
    n_users: int
    n_seeds: int

    @property
    def shown(self) -> bool:
        """The interval excludes 0: the sign of the difference is shown at this level."""
        return self.low > 0.0 or self.high < 0.0

    @property
    def relative(self) -> float:
        return self.mean / self.base if self.base else float("nan")

    def describe(self, digits: int = 4) -> str:
        """'+0.0123 [+0.0040, +0.0201] (+8.1%)' and whether it is shown."""
        f = f"{{:+.{digits}f}}"
        return (
            f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}] ({100 * self.relative:+.1f}%)"
            + ("" if self.shown else " not shown")
        )


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Difference:
    """Bootstrap interval of mean(A - B).

    Parameters
    ----------
    a, b:
        float [n_seeds, n_users] per-user metric of each model, users in the same order (the rows of the
        evaluated users); a 1-D array is one seed. The seed counts may differ: each model's seeds are
        averaged per user first.
    resamples:
        bootstrap resamples of the users.
    seed:
        seed of the resampling (the interval is reproducible).
    level:
        coverage of the two-sided percentile interval.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two models were evaluated on different users ({a.shape[1]} vs {b.shape[1]})")
    if a.shape[1] == 0:
        raise ValueError("no users to compare")
    diff = a.mean(0) - b.mean(0)  # [n_users]
    rng = np.random.default_rng(seed)
    n = diff.shape[0]
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # blocks keep the index matrix small for large user counts
        stop = min(start + 256, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Difference(
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        base=float(b.mean()),
        n_users=int(n),
        n_seeds=int(min(a.shape[0], b.shape[0])),
    )
