"""Tiny planted data, model construction and a training loop for the MRdIB tests (area `mrdib`)."""

from __future__ import annotations

import numpy as np
import torch

from training.config import BackboneConfig, MRdIBConfig, TrainConfig
from training.data.dataset import TEST, TRAIN, VALID, InteractionDataset
from training.models.base import ModelContext
from training.models.recommender import Recommender, build_recommender

DIM = 16
SMALL = dict(hidden_dim=24, latent_dim=12, shared_dim=8, unique_dim=8, synergy_dim=8, club_hidden_dim=16)
# The tests exercise every estimator path: they pin CLUB and the original unit weights / init / no content L2
# (the defaults chosen on ml-100k-mm-sparse validation differ; tests/test_mrdib_knobs.py covers those).
SMALL.update(
    redundancy_estimator="club", lambda_u=0.1, lambda_r=0.1, lambda_s=0.1, lambda_ib=1.0, init_scale=1.0,
    content_reg=0.0, contrastive_max=256,
)


def planted(modalities: tuple[str, ...] = ("image", "text"), n_users: int = 40, n_items: int = 48, seed: int = 0):
    """Users of 4 taste clusters take 8 items of their cluster (6 train, 1 valid, 1 test) and 1 random item.

    Each modality carries the item's cluster (redundant), its own random factor (unique) and noise.
    """
    rng = np.random.default_rng(seed)
    user_c = np.arange(n_users) % 4
    item_c = np.arange(n_items) % 4
    users, items, splits = [], [], []
    for u in range(n_users):
        own = rng.choice(np.flatnonzero(item_c == user_c[u]), size=8, replace=False)
        other = rng.choice(np.flatnonzero(item_c != user_c[u]), size=1)
        chosen = np.concatenate([own, other])
        users += [u] * len(chosen)
        items += chosen.tolist()
        splits += [TRAIN] * 6 + [VALID, TEST, TRAIN]
    centers = rng.normal(size=(4, 6))
    features = {}
    for k, m in enumerate(modalities):
        d = 10 + 3 * k
        mix = rng.normal(size=(6 + 2, d))
        latent = np.concatenate([centers[item_c], rng.normal(size=(n_items, 2))], axis=1)
        features[m] = (latent @ mix + 0.1 * rng.normal(size=(n_items, d))).astype(np.float32)
    return InteractionDataset.from_pairs(users, items, splits, features, n_users, name="mrdib-planted")


def config(backbone: str = "bpr", enabled: bool = True, **mrdib: object) -> TrainConfig:
    params = {**SMALL, **mrdib}
    return TrainConfig(
        backbone=BackboneConfig(name=backbone, embedding_dim=DIM),  # type: ignore[arg-type]
        mrdib=MRdIBConfig(enabled=enabled, **params),  # type: ignore[arg-type]
    )


def make(ds: InteractionDataset, backbone: str = "bpr", seed: int = 0, enabled: bool = True, **mrdib: object):
    """(Recommender, ctx) built with torch seeded by `seed`."""
    ctx = ModelContext.from_dataset(ds)
    torch.manual_seed(seed)
    return build_recommender(config(backbone, enabled, **mrdib), ctx), ctx


def batch(ctx: ModelContext, n: int = 64, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, ctx.train_users.numel(), (n,), generator=g)
    return ctx.train_users[idx], ctx.train_items[idx], torch.randint(0, ctx.n_items, (n,), generator=g)


def train(model: Recommender, ctx: ModelContext, steps: int, lr: float = 0.01, n: int = 64) -> list[float]:
    """Adam on main_parameters + the CLUB step on aux_parameters, like the trainer; returns the total losses."""
    model.train()
    opt = torch.optim.Adam(model.main_parameters(), lr=lr)
    aux_params = model.aux_parameters()
    aux_opt = torch.optim.Adam(aux_params, lr=lr) if aux_params else None
    losses = []
    for step in range(steps):
        model.on_epoch_start(step // 10)
        users, pos, neg = batch(ctx, n, seed=100 + step)
        out = model(users, pos, neg)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            aux = model.aux_loss(users, pos, neg)
            assert aux is not None
            aux.backward()
            aux_opt.step()
        losses.append(out["loss"].item())
    return losses
