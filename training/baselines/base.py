"""What every reference baseline provides: fit on a dataset, then score user rows.

The evaluator only needs ``score`` (user rows -> [b, n_items] scores), so a baseline is a
score function with a ``fit`` step in front; the CLI and the tests treat all of them alike.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from training.data.dataset import InteractionDataset


@runtime_checkable
class Baseline(Protocol):
    """A fitted-on-demand scorer. ``fit`` returns ``self`` so calls chain."""

    name: str

    def fit(self, dataset: InteractionDataset) -> Baseline:
        """Learn from the TRAIN split only (BPR also reads VALID for early stopping)."""
        ...

    def score(self, users: Tensor) -> Tensor:
        """float32 [len(users), n_items] scores for int64 user rows; a fresh tensor."""
        ...
