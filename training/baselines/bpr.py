"""Plain BPR matrix factorisation: the collaborative baseline every MMRec paper reports.

Model: score(u, i) = <P_u, Q_i>, trained with the BPR loss on (user, positive, negative)
triples, the negative drawn uniformly from items NOT in the user's training set. Adam,
L2 on the batch's embeddings, early stopping on a VALIDATION metric (default Recall@20)
with patience; the parameters of the best validation epoch are restored at the end, so
test is always evaluated at that epoch. One ``torch.Generator`` seeded from ``seed``
drives the initialisation, the shuffling and the negatives, so a run is reproducible.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from training.data.dataset import TRAIN, VALID, InteractionDataset
from training.evaluation import METRIC_NAMES, mask_and_target, run_evaluation

log = logging.getLogger(__name__)


class BPRConfig(BaseModel):
    """Hyper-parameters of BPR-MF (choose them on VALIDATION, never on test)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    reg: float = Field(1e-4, ge=0, description="weight of the mean squared L2 norm of the batch's embeddings")
    batch_size: int = Field(2048, ge=1)
    max_epochs: int = Field(500, ge=1)
    patience: int = Field(20, ge=1, description="evaluations without improvement before stopping")
    eval_every: int = Field(1, ge=1, description="epochs between validation evaluations")
    valid_metric: str = "recall@20"
    seed: int = 2024


def _metric_cut_off(metric: str) -> int:
    """K of a metric name like ``recall@20``; anything else is a configuration error."""
    name, _, k = metric.partition("@")
    if name not in (*METRIC_NAMES, "coverage", "popularity") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"valid_metric must look like 'recall@20' (one of {METRIC_NAMES} @ K), got {metric!r}")
    return int(k)


class NegativeSampler:
    """Uniform negatives that are never one of the user's training items, fully vectorised.

    A candidate is drawn uniformly; collisions with the user's training items (found by a
    binary search over sorted ``user * n_items + item`` keys) are redrawn until none is left.
    """

    def __init__(self, users: Tensor, items: Tensor, n_items: int, generator: torch.Generator) -> None:
        self.n_items = n_items
        self.gen = generator
        self.keys = torch.unique(users.to(torch.int64) * n_items + items.to(torch.int64))  # sorted
        counts = torch.bincount(users)
        full = torch.nonzero(counts >= n_items).flatten()
        if full.numel():
            raise ValueError(f"user rows {full[:5].tolist()} interacted with every item: no negative exists")

    def _is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        k = users * self.n_items + items
        pos = torch.searchsorted(self.keys, k).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == k

    def sample(self, users: Tensor) -> Tensor:
        neg = torch.randint(0, self.n_items, users.shape, generator=self.gen, device=users.device)
        bad = self._is_positive(users, neg)
        while bool(bad.any()):
            idx = torch.nonzero(bad).flatten()
            neg[idx] = torch.randint(0, self.n_items, idx.shape, generator=self.gen, device=users.device)
            bad[idx] = self._is_positive(users[idx], neg[idx])
        return neg


class BPRMF(nn.Module):
    """Matrix factorisation with BPR loss and validation early stopping."""

    name = "bpr"

    def __init__(self, cfg: BPRConfig | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.cfg = cfg or BPRConfig()
        self.device = torch.device(device)
        self.user_emb: nn.Parameter | None = None
        self.item_emb: nn.Parameter | None = None
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        self.best_valid = float("-inf")

    def _init(self, n_users: int, n_items: int, gen: torch.Generator) -> None:
        d = self.cfg.dim
        # Xavier-normal, as MMRec initialises its BPR embeddings.
        std_u = (2.0 / (n_users + d)) ** 0.5
        std_i = (2.0 / (n_items + d)) ** 0.5
        self.user_emb = nn.Parameter(torch.randn(n_users, d, generator=gen).mul_(std_u).to(self.device))
        self.item_emb = nn.Parameter(torch.randn(n_items, d, generator=gen).mul_(std_i).to(self.device))

    def loss(self, u: Tensor, i: Tensor, j: Tensor) -> Tensor:
        assert self.user_emb is not None and self.item_emb is not None
        pu, qi, qj = self.user_emb[u], self.item_emb[i], self.item_emb[j]
        bpr = -F.logsigmoid((pu * qi).sum(1) - (pu * qj).sum(1)).mean()
        reg = (pu.pow(2).sum(1) + qi.pow(2).sum(1) + qj.pow(2).sum(1)).mean()
        return bpr + self.cfg.reg * reg

    def fit(self, dataset: InteractionDataset) -> BPRMF:
        cfg = self.cfg
        _metric_cut_off(cfg.valid_metric)  # fail before training, not after the first epoch
        if not (dataset.splits == VALID).any():
            raise ValueError(f"dataset {dataset.name!r} has no validation interactions: BPR needs them to stop early")
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self._init(dataset.n_users, dataset.n_items, gen)
        u_np, i_np = dataset.split_pairs(TRAIN)
        users = torch.as_tensor(np.asarray(u_np, dtype=np.int64))
        items = torch.as_tensor(np.asarray(i_np, dtype=np.int64))
        sampler = NegativeSampler(users, items, dataset.n_items, gen)
        opt = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        # The validation matrices are built once, not every epoch.
        metric_k = _metric_cut_off(cfg.valid_metric)
        valid_mask, valid_target = mask_and_target(dataset, VALID)
        train_pop = dataset.item_popularity()
        best_state = copy.deepcopy(self.state_dict())
        bad_evals = 0
        self.history = []
        for epoch in range(1, cfg.max_epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(users), generator=gen)
            total = 0.0
            for s in range(0, len(perm), cfg.batch_size):
                b = perm[s : s + cfg.batch_size]
                u, i = users[b], items[b]
                j = sampler.sample(u)
                loss = self.loss(u.to(self.device), i.to(self.device), j.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            if epoch % cfg.eval_every:
                continue
            v = run_evaluation(self.score, valid_mask, valid_target, train_pop, ks=(metric_k,))[cfg.valid_metric]
            epoch_loss = total / len(users)
            self.history.append({"epoch": epoch, "loss": epoch_loss, cfg.valid_metric: v})
            log.info(
                "epoch %d loss %.4f %s %.4f (%.2fs)", epoch, epoch_loss, cfg.valid_metric, v, time.perf_counter() - t0
            )
            if v > self.best_valid:
                self.best_valid, self.best_epoch, bad_evals = v, epoch, 0
                best_state = copy.deepcopy(self.state_dict())
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    break
        self.load_state_dict(best_state)
        return self

    def score(self, users: Tensor) -> Tensor:
        if self.user_emb is None or self.item_emb is None:
            raise RuntimeError("BPRMF.score called before fit")
        with torch.no_grad():
            return self.user_emb[users.to(self.device)] @ self.item_emb.T
