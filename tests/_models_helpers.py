"""Tiny planted datasets and a minimal BPR training loop for the backbone tests (area `models`).

The planted structure: users and items fall into clusters; a user interacts (mostly) with items of
its own cluster, and every modality's features encode the item's cluster plus noise. Any working
recommender must therefore rank a user's own-cluster items above the rest.
"""

from __future__ import annotations

import numpy as np
import torch

from training.config import BackboneConfig
from training.data.dataset import TEST, TRAIN, VALID, InteractionDataset
from training.models.base import Backbone, ModelContext
from training.models.registry import build_backbone

FEATURE_DIMS = {"image": 12, "text": 16, "meta": 6}


def planted_dataset(
    modalities: tuple[str, ...] = ("image", "text"),
    n_clusters: int = 4,
    users_per_cluster: int = 10,
    items_per_cluster: int = 12,
    seed: int = 0,
) -> InteractionDataset:
    """Clustered interactions: each user takes 8 own-cluster items (6 train, 1 valid, 1 test) + 1 noise item."""
    rng = np.random.default_rng(seed)
    n_users, n_items = n_clusters * users_per_cluster, n_clusters * items_per_cluster
    user_c = np.repeat(np.arange(n_clusters), users_per_cluster)
    item_c = np.repeat(np.arange(n_clusters), items_per_cluster)
    users, items, splits = [], [], []
    for u in range(n_users):
        own = rng.choice(np.flatnonzero(item_c == user_c[u]), size=8, replace=False)
        noise = rng.choice(np.flatnonzero(item_c != user_c[u]), size=1)
        chosen = np.concatenate([own, noise])
        split = np.array([TRAIN] * 6 + [VALID, TEST] + [TRAIN], dtype=np.int8)
        users += [u] * len(chosen)
        items += chosen.tolist()
        splits += split.tolist()
    features = {}
    for m in modalities:
        d = FEATURE_DIMS.get(m, 8)
        centers = rng.normal(size=(n_clusters, d))
        features[m] = (centers[item_c] + 0.3 * rng.normal(size=(n_items, d))).astype(np.float32)
    return InteractionDataset.from_pairs(users, items, splits, features, n_users, name="planted")


def make(name: str, ds: InteractionDataset, seed: int = 0, **params: object) -> tuple[Backbone, ModelContext]:
    torch.manual_seed(seed)
    ctx = ModelContext.from_dataset(ds)
    cfg = BackboneConfig(name=name, embedding_dim=16, n_layers=2, params=dict(params))
    return build_backbone(ctx, cfg), ctx


def total_loss(model: Backbone, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    ue, ie = model.propagate()
    out = model.loss(users, pos, neg, ue, ie)
    return sum(out.values(), torch.zeros(()))


def train(model: Backbone, ctx: ModelContext, steps: int, batch: int = 128, lr: float = 0.02, seed: int = 1) -> None:
    """`steps` Adam steps of the backbone's loss on uniform (user, pos, random neg) triples."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = ctx.train_users.numel()
    for step in range(steps):
        if step % 20 == 0:
            model.on_epoch_start(step // 20)
        idx = torch.randint(0, n, (batch,))
        neg = torch.randint(0, ctx.n_items, (batch,))
        opt.zero_grad()
        total_loss(model, ctx.train_users[idx], ctx.train_items[idx], neg).backward()
        opt.step()


@torch.no_grad()
def train_auc(model: Backbone, ds: InteractionDataset) -> float:
    """Mean over users of P(score(train positive) > score(item the user never interacted with))."""
    model.eval()
    ue, ie = model.propagate()
    model.train()
    scores = ue @ ie.T  # [n_users, n_items]
    train = torch.as_tensor(ds.csr(TRAIN).toarray() > 0)
    seen = torch.as_tensor(ds.csr((TRAIN, VALID, TEST)).toarray() > 0)
    aucs = []
    for u in range(ds.n_users):
        p, q = scores[u][train[u]], scores[u][~seen[u]]
        aucs.append((p[:, None] > q[None, :]).float().mean())
    return float(torch.stack(aucs).mean())
