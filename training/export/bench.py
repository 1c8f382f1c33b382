"""Tower quality report: how good are the fold-in user tower and the cold-start item tower?

    python -m training.export.bench --data ../shared/data/ml-100k-mm [--checkpoint DIR]

With ``--checkpoint`` the learned vectors come from a trained checkpoint; without it a small
BPR matrix factorisation (``fit_bpr_mf``, the reference baseline here, not a production model)
is fitted so that the towers can be judged before the trainer exists.

Reported:

- user tower: test Recall@20 with each test user's vector computed by the tower from its
  training history, against the learned user vector (same items, same masking);
- item tower, cold start: 20% of the items are held out *with all their interactions*, the
  base model is fitted on the rest, the item tower on the trained items; test users' interactions
  with held-out items are ranked among the held-out items only. Baselines: random, the base
  model's own vectors for the never-seen items, and
  "popularity by feature similarity" (mean training popularity of the 10 most similar warm items
  by cosine over standardised features), since plain most-popular cannot rank unseen items;
- the same cold items ranked among the WHOLE catalogue (each user's training items masked; only
  interactions with cold items count): the item tower's vectors beside the warm items' learned ones,
  against most-popular (which scores 0 there: a never-seen item has no popularity) and most-popular
  with the feature-similarity popularity filled in for the new items.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from training.data.dataset import TEST, TRAIN, InteractionDataset
from training.export.evaluate import recall_at_k
from training.export.towers import (
    TowerFitConfig,
    fit_item_tower,
    fit_user_tower,
    item_tower_vectors,
    user_histories,
    user_tower_vectors,
)

BaseFitter = Callable[[InteractionDataset], tuple[np.ndarray, np.ndarray]]


def fit_bpr_mf(
    n_users: int,
    n_items: int,
    users: np.ndarray,
    items: np.ndarray,
    dim: int = 64,
    epochs: int = 40,
    lr: float = 5e-3,
    reg: float = 1e-4,
    batch: int = 2048,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain BPR-MF on (user, item) pairs; returns float32 (user vectors, item vectors).

    Items without any pair keep their small random init (that is what a real backbone gives
    unseen items too, and why the item tower exists).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    U = torch.nn.Parameter(torch.randn(n_users, dim, generator=g) * 0.1)
    V = torch.nn.Parameter(torch.randn(n_items, dim, generator=g) * 0.1)
    opt = torch.optim.Adam([U, V], lr=lr)
    pu, pi = torch.as_tensor(users, dtype=torch.long), torch.as_tensor(items, dtype=torch.long)
    item_pool = torch.unique(pi)
    for _ in range(epochs):
        perm = torch.randperm(len(pu), generator=g)
        for s in range(0, len(pu), batch):
            b = perm[s : s + batch]
            u, i = pu[b], pi[b]
            j = item_pool[torch.randint(0, len(item_pool), (len(b),), generator=g)]
            eu, ei, ej = U[u], V[i], V[j]
            x = (eu * (ei - ej)).sum(-1)
            loss = -torch.nn.functional.logsigmoid(x).mean() + reg * (eu.pow(2) + ei.pow(2) + ej.pow(2)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return U.detach().numpy().copy(), V.detach().numpy().copy()


def user_tower_report(
    ds: InteractionDataset,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    max_history: int = 50,
    k: int = 20,
    cfg: TowerFitConfig | None = None,
) -> dict[str, float]:
    """Test Recall@k: tower-from-training-history vs learned user vectors; plus fit seconds."""
    t0 = time.perf_counter()
    hist = user_histories(ds, max_history)
    tower = fit_user_tower(hist, user_vectors, item_vectors, max_history, cfg)
    fit_s = time.perf_counter() - t0
    tower_u = user_tower_vectors(tower, hist)
    test, seen = ds.csr(TEST), ds.csr(TRAIN)  # the project's protocol: mask training items only
    learned = recall_at_k(user_vectors, item_vectors, test, seen, k)
    towered = recall_at_k(tower_u, item_vectors, test, seen, k)
    return {
        f"learned_test_recall@{k}": learned,
        f"user_tower_test_recall@{k}": towered,
        "user_tower_relative": towered / learned if learned > 0 else math.nan,
        "user_tower_fit_s": fit_s,
    }


def cold_split(ds: InteractionDataset, frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """bool [n_items]: the items held out (with all their interactions) for the cold-start test."""
    rng = np.random.default_rng(seed)
    cold = np.zeros(ds.n_items, dtype=bool)
    cold[rng.choice(ds.n_items, size=round(frac * ds.n_items), replace=False)] = True
    return cold


def interactions_with(ds: InteractionDataset, items: np.ndarray) -> sp.csr_matrix:
    """[n_users, n_items] 0/1: every interaction (any split) with the items where `items` (bool) is True --
    the targets of a cold-start test, whose items the model never saw."""
    mask = items[ds.items]
    targets = sp.csr_matrix(
        (np.ones(int(mask.sum()), np.float32), (ds.users[mask], ds.items[mask])), shape=(ds.n_users, ds.n_items)
    )
    targets.data[:] = 1.0  # a pair seen in several splits is still one target
    return targets


def without_items(ds: InteractionDataset, drop: np.ndarray) -> InteractionDataset:
    """The dataset minus every interaction (any split) with the items where `drop` is True."""
    keep = ~drop[ds.items]
    return InteractionDataset(
        name=f"{ds.name}-warm", users=ds.users[keep], items=ds.items[keep], timestamps=ds.timestamps[keep],
        splits=ds.splits[keep], user_ids=ds.user_ids, item_ids=ds.item_ids, features=ds.features,
    )


def train_base(cfg_path: Path | None, backbone: str) -> BaseFitter:
    """A BaseFitter that trains with the project's trainer (config file and/or backbone name)."""

    def fit(ds: InteractionDataset) -> tuple[np.ndarray, np.ndarray]:
        import tempfile

        from training.checkpoint import load_embeddings
        from training.config import load_config
        from training.trainer import train

        cfg = load_config(cfg_path, {"backbone.name": backbone, "device": "cpu"})
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, ds, Path(tmp), progress=False)
            emb = load_embeddings(Path(tmp))
        return emb.user, emb.item

    return fit


def cold_start_report(
    ds: InteractionDataset,
    dim: int = 64,
    frac: float = 0.2,
    k: int = 20,
    seed: int = 0,
    epochs: int = 40,
    fit_base: BaseFitter | None = None,
) -> dict[str, float]:
    """Fit the base model without the cold items, the item tower on warm items; rank cold items.

    `fit_base`: dataset -> (user vectors, item vectors); default BPR-MF (`fit_bpr_mf`).
    Targets: every interaction (any split) between a user and a cold item; the base model
    never saw them, so all splits are fair. Exclusions: none needed (cold items are unseen).
    """
    cold = cold_split(ds, frac, seed)
    tr = (ds.splits == TRAIN) & ~cold[ds.items]
    if fit_base is None:
        U, V = fit_bpr_mf(ds.n_users, ds.n_items, ds.users[tr], ds.items[tr], dim=dim, epochs=epochs, seed=seed)
    else:
        U, V = fit_base(without_items(ds, cold))
    warm_rows = np.flatnonzero(~cold & (np.bincount(ds.items[tr], minlength=ds.n_items) > 0))
    t0 = time.perf_counter()
    tower = fit_item_tower(ds.features, V, warm_rows, U, (ds.users[tr], ds.items[tr]))
    fit_s = time.perf_counter() - t0
    V_cold = V.copy()
    V_cold[cold] = item_tower_vectors(tower, ds.features, np.flatnonzero(cold))
    targets = interactions_with(ds, cold)
    tower_r = recall_at_k(U, V_cold, targets, None, k, candidates=cold)
    # what the backbone itself gives never-seen items (random init for ID-only models; content-based
    # models such as FREEDOM / MRdIB derive part of every item vector from its features)
    backbone_r = recall_at_k(U, V, targets, None, k, candidates=cold)
    # popularity by feature similarity: cold item's score = mean popularity of its 10 nearest warm items
    pop = np.bincount(ds.items[tr], minlength=ds.n_items).astype(np.float64)
    z = np.concatenate([(x - x[warm_rows].mean(0)) / (x[warm_rows].std(0) + 1e-6) for x in ds.features.values()], 1)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    sims = z[cold] @ z[warm_rows].T
    nn_idx = np.argpartition(-sims, 9, axis=1)[:, :10]
    pop_score = np.zeros(ds.n_items)
    pop_score[cold] = pop[warm_rows][nn_idx].mean(1)
    ones_u = np.ones((ds.n_users, 1), np.float32)
    pop_r = recall_at_k(ones_u, pop_score[:, None].astype(np.float32), targets, None, k, candidates=cold)
    rng = np.random.default_rng(seed)
    rand_r = recall_at_k(ones_u, rng.random((ds.n_items, 1)).astype(np.float32), targets, None, k, candidates=cold)
    # The shop's view: new items must win a place in the full list against the warm catalogue. Each user's
    # training items are masked; only interactions with cold items count as hits.
    seen = sp.csr_matrix(
        (np.ones(int(tr.sum()), np.float32), (ds.users[tr], ds.items[tr])), shape=(ds.n_users, ds.n_items)
    )
    full = {
        "item_tower": recall_at_k(U, V_cold, targets, seen, k),
        # most-popular never ranks a never-seen item (its training popularity is 0): 0 by construction
        "most_popular": recall_at_k(ones_u, pop[:, None].astype(np.float32), targets, seen, k),
        "popularity_with_feature_popularity_for_new_items": recall_at_k(
            ones_u, np.where(cold, pop_score, pop)[:, None].astype(np.float32), targets, seen, k
        ),
    }
    return {
        f"cold_item_tower_recall@{k}": tower_r,
        f"cold_backbone_vectors_recall@{k}": backbone_r,
        f"cold_feature_popularity_recall@{k}": pop_r,
        f"cold_random_recall@{k}": rand_r,
        **{f"full_catalogue_{name}_recall@{k}": r for name, r in full.items()},
        "cold_items": int(cold.sum()),
        "cold_item_tower_fit_s": fit_s,
    }


def main(
    data: Path, checkpoint: Path | None = None, max_history: int = 50, backbone: str | None = None,
    config: Path | None = None,
) -> dict[str, float | str]:
    """User tower report on `checkpoint` (or BPR-MF) and cold-start report with `backbone` (or BPR-MF)."""
    from training.data.load import load_dataset

    ds = load_dataset(data)
    if checkpoint is not None:
        from training.checkpoint import load_embeddings

        emb = load_embeddings(checkpoint)
        U, V = emb.user, emb.item
    else:
        u, i = ds.split_pairs(TRAIN)
        U, V = fit_bpr_mf(ds.n_users, ds.n_items, u, i)
    out: dict[str, float | str] = dict(user_tower_report(ds, U, V, max_history))
    fit_base = train_base(config, backbone) if backbone else None
    out.update(cold_start_report(ds, dim=V.shape[1], fit_base=fit_base))
    out["cold_base"] = backbone or "bpr-mf"
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="learned vectors for the user tower report")
    p.add_argument("--backbone", default=None, help="train the cold-start base with the trainer (e.g. lightgcn)")
    p.add_argument("--config", type=Path, default=None, help="TrainConfig file for --backbone")
    p.add_argument("--max-history", type=int, default=50)
    a = p.parse_args()
    print(json.dumps(main(a.data, a.checkpoint, a.max_history, a.backbone, a.config), indent=2))
