"""Most-popular: every user gets the items with the most TRAINING interactions.

The floor any personalised model must clear, and a sanity check of the evaluator: its
``popularity@K`` must be close to 1 and its coverage@K tiny (K / n_items).
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.data.dataset import InteractionDataset


class MostPopular:
    """Scores item i by its training interaction count, identically for every user."""

    name = "pop"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._pop: Tensor | None = None

    def fit(self, dataset: InteractionDataset) -> MostPopular:
        self._pop = torch.as_tensor(dataset.item_popularity(), dtype=torch.float32, device=self.device)
        return self

    def score(self, users: Tensor) -> Tensor:
        if self._pop is None:
            raise RuntimeError("MostPopular.score called before fit")
        return self._pop.unsqueeze(0).repeat(len(users), 1)
