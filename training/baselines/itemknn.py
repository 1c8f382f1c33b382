"""Content ItemKNN: recommend items whose modality features resemble the user's training items.

score(u, j) = sum over training items i of u of sim(i, j), where sim keeps only each item's
top-k most similar items (cosine on the modality features, positive similarities only).
It needs no interaction signal beyond the user's history, so it can rank items nobody has
interacted with yet: the content baseline MRdIB's modality encoders must beat.

Combining modalities (both choices are in the validation grid):

- ``concat``: L2-normalise each modality, concatenate, divide by sqrt(M). The cosine of
  the result is exactly the *mean of the per-modality cosines*; top-k is taken on it.
- ``mean``: build one top-k graph per modality, then average the sparse graphs, so an item
  can keep neighbours that are close in only one modality.

The similarity graph is computed block-wise (``block_scores`` similarities at a time), so a
catalogue of 100k+ items never materialises a dense item x item matrix; only the sparse
top-k graph (n_items x k) is kept.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from training.data.dataset import InteractionDataset


class ItemKNNConfig(BaseModel):
    """Hyper-parameters of content ItemKNN (choose them on VALIDATION, never on test)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(50, ge=1, description="neighbours kept per item")
    modalities: list[str] | None = Field(None, description="modalities to use; None = all of the dataset's")
    combine: Literal["concat", "mean"] = "concat"
    block_scores: int = Field(1 << 24, ge=1, description="most similarities computed at once")


def l2_normalise(x: Tensor) -> Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (similarity 0 to everything)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def knn_graph(x: Tensor, k: int, block_scores: int = 1 << 24) -> sp.csr_matrix:
    """Sparse float32 [n, n]: row i holds the top-k positive inner products <x_i, x_j>, j != i.

    ``x`` should be L2-normalised (then the values are cosines). Rows are processed in blocks
    of ``block_scores // n`` items, each block doing one [b, n] matmul and a top-k.
    """
    n = x.shape[0]
    k_eff = min(k, n - 1)
    if k_eff < 1:
        return sp.csr_matrix((n, n), dtype=np.float32)
    block = max(1, block_scores // max(n, 1))
    rows_l, cols_l, vals_l = [], [], []
    for s in range(0, n, block):
        e = min(n, s + block)
        sim = x[s:e] @ x.T  # [b, n]
        idx = torch.arange(s, e, device=x.device)
        sim[idx - s, idx] = float("-inf")  # no self-similarity
        v, c = torch.topk(sim, k_eff, dim=1)
        keep = v > 0
        rows_l.append(idx.unsqueeze(1).expand_as(c)[keep].cpu().numpy())
        cols_l.append(c[keep].cpu().numpy())
        vals_l.append(v[keep].cpu().numpy().astype(np.float32))
    g = sp.csr_matrix(
        (np.concatenate(vals_l), (np.concatenate(rows_l), np.concatenate(cols_l))), shape=(n, n), dtype=np.float32
    )
    g.sort_indices()
    return g


class ItemKNN:
    """Content-based item kNN over the dataset's modality features."""

    name = "itemknn"

    def __init__(self, cfg: ItemKNNConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg or ItemKNNConfig()
        self.device = torch.device(device)
        self.graph: sp.csr_matrix | None = None
        self._train: sp.csr_matrix | None = None

    def fit(self, dataset: InteractionDataset) -> ItemKNN:
        mods = self.cfg.modalities or dataset.modalities
        unknown = [m for m in mods if m not in dataset.features]
        if unknown:
            raise ValueError(f"dataset {dataset.name!r} has no modality {unknown}; it has {dataset.modalities}")
        feats = [l2_normalise(torch.as_tensor(dataset.features[m], device=self.device)) for m in mods]
        if self.cfg.combine == "concat" or len(feats) == 1:
            x = torch.cat(feats, dim=1) / math.sqrt(len(feats))
            self.graph = knn_graph(x, self.cfg.k, self.cfg.block_scores)
        else:
            graphs = [knn_graph(f, self.cfg.k, self.cfg.block_scores) for f in feats]
            self.graph = (sum(graphs[1:], graphs[0]) / len(graphs)).tocsr()
        self._train = dataset.train_csr()
        return self

    def score(self, users: Tensor) -> Tensor:
        if self.graph is None or self._train is None:
            raise RuntimeError("ItemKNN.score called before fit")
        rows = users.cpu().numpy()
        s = (self._train[rows] @ self.graph).toarray().astype(np.float32, copy=False)
        return torch.from_numpy(s).to(self.device)
