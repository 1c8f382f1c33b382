"""The two serving towers, fitted after main training with the item/user vectors frozen.

User tower
    history (item rows, int64 [batch, L], most recent first, padded with ``PAD`` = -1)
    -> user vector [batch, d]. The frozen item vectors are a constant of the module (and of the
    exported ONNX graph), so the service passes item rows only. Pooling is a recency-weighted
    mean (one learned logit per position, softmax-normalised over the valid positions) plus
    log(history length), followed by a linear map and a residual MLP. Rows outside
    0..n_items-1 (the padding) are masked out inside the graph; an all-padding row yields the
    tower's "empty history" vector. L may be anything from 1 to ``max_history``.

    Why fold-in instead of reusing the learned user table: users who were not in the training
    data (or whose history has grown since) still get a vector, computed from what they did.
    Fitting mixes MSE to the learned user vector (reproduce the trained model for known users)
    with BPR on held-back history items (rank what the user did next, not only what the input
    already contains); random history dropout makes it robust to short histories.

Item tower
    one float32 [batch, d_m] input per modality (named by modality) -> item vector [batch, d],
    for cold-start items that have features but no interactions. An MLP over the concatenated,
    standardised features fitted by MSE to the trained item vectors plus an optional BPR term
    over (user, item) training pairs against random items, so that ranking, not only geometry,
    is preserved.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from training.data.dataset import TRAIN, InteractionDataset

PAD = -1  # padding value of the user tower's history input (any out-of-range row is ignored too)


class UserTower(nn.Module):
    """History of item rows -> user vector. See the module docstring.

    Parameters
    ----------
    item_vectors:
        float32 [n_items, d], frozen; stored as a buffer (a constant in ONNX).
    max_history:
        Longest history the tower accepts (one recency logit per position).
    hidden:
        Width of the residual MLP.
    """

    def __init__(self, item_vectors: np.ndarray, max_history: int, hidden: int = 128) -> None:
        super().__init__()
        items = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        n, d = items.shape
        # One extra zero row at index n receives every padded position.
        self.register_buffer("table", torch.cat([items, torch.zeros(1, d)], dim=0))
        self.n_items, self.dim, self.max_history = int(n), int(d), int(max_history)
        self.pos_logit = nn.Parameter(torch.zeros(max_history))
        # Scale of the MLP's input, set by the fit to 1 / mean pooled norm: item vectors of some
        # backbones have norms ~20 while user vectors have ~0.4, and the MLP must see unit scale.
        self.register_buffer("in_scale", torch.ones(()))
        self.proj = nn.Linear(d, d)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d))
            self.proj.bias.zero_()
        self.mlp = nn.Sequential(nn.Linear(d + 1, hidden), nn.ReLU(), nn.Linear(hidden, d))
        with torch.no_grad():
            self.mlp[2].weight.mul_(0.1)
            self.mlp[2].bias.zero_()

    def forward(self, history: Tensor) -> Tensor:
        # history: int64 [B, L], L <= max_history
        pooled, loglen = self.pool(history)
        return self.proj(pooled) + self.mlp(torch.cat([pooled * self.in_scale, loglen], dim=1))

    def pool(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """(recency-weighted mean item vector [B, d], log(1 + history length) [B, 1])."""
        valid = (history >= 0) & (history < self.n_items)  # [B, L]
        idx = torch.where(valid, history, torch.full_like(history, self.n_items))
        e = torch.nn.functional.embedding(idx, self.table)  # [B, L, d]
        length = history.shape[1]
        logits = self.pos_logit[:length].unsqueeze(0)  # [1, L]
        w = torch.exp(logits - logits.max()) * valid.to(e.dtype)  # [B, L]
        pooled = (w.unsqueeze(-1) * e).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1e-12)  # [B, d]
        loglen = torch.log1p(valid.to(e.dtype).sum(dim=1, keepdim=True))  # [B, 1]
        return pooled, loglen


def inverse_std(std: np.ndarray, rel_floor: float = 0.01, constant: float = 1e-6) -> np.ndarray:
    """Per-dimension input scale of the item tower.

    Why not plain 1/std: a dimension that is (almost) constant over the training items would get a
    huge weight, and a cold item that differs there (a genre no trained item had) would blow the
    tower's output up. Constant dimensions (std < `constant`) carry no information the tower could
    have learned from, so they get weight 0; the others are floored at `rel_floor` x the modality's
    mean std.
    """
    std = np.asarray(std, dtype=np.float64)
    live = std >= constant
    if not live.any():
        return np.zeros_like(std, dtype=np.float32)
    floor = rel_floor * std[live].mean()
    return np.where(live, 1.0 / np.maximum(std, floor), 0.0).astype(np.float32)


class ItemTower(nn.Module):
    """Modality features -> item vector for cold-start items. See the module docstring.

    Each modality is standardised with the training items' mean/std (stored as buffers, so the
    ONNX graph takes raw features), then the concatenation goes through a 2-layer MLP.
    """

    def __init__(
        self, feature_stats: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, hidden: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.modalities = list(feature_stats)
        for k, (mean, std) in enumerate(feature_stats.values()):
            self.register_buffer(f"mean_{k}", torch.as_tensor(np.asarray(mean, np.float32)))
            self.register_buffer(f"inv_std_{k}", torch.as_tensor(inverse_std(std)))
        d_in = sum(int(np.asarray(m).shape[0]) for m, _ in feature_stats.values())
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, *features: Tensor) -> Tensor:
        # features: one float32 [B, d_m] per modality, in self.modalities order
        parts = [(x - getattr(self, f"mean_{k}")) * getattr(self, f"inv_std_{k}") for k, x in enumerate(features)]
        return self.net(torch.cat(parts, dim=1))


# ----------------------------------------------------------------------------------------------------------------
# Histories


def user_histories(ds: InteractionDataset, max_history: int, splits: tuple[int, ...] = (TRAIN,)) -> np.ndarray:
    """int64 [n_users, max_history]: each user's items of `splits`, most recent first, padded with PAD.

    Ties in timestamp keep the file order reversed (later line = more recent), so the result is
    deterministic for datasets without timestamps.
    """
    indptr, items = ds.recent_first(splits)
    u = np.repeat(np.arange(ds.n_users), np.diff(indptr))
    rank = np.arange(len(items)) - indptr[u]
    keep = rank < max_history
    out = np.full((ds.n_users, max_history), PAD, dtype=np.int64)
    out[u[keep], rank[keep]] = items[keep]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class TowerFitConfig:
    """Knobs of the post-training tower fits (defaults: a few seconds on ml-100k on 2 CPU cores)."""

    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5
    mse_weight: float = 1.0
    bpr_weight: float = 0.5
    history_dropout: float = 0.2
    n_negatives: int = 4
    seed: int = 0
    threads: int | None = None  # torch intra-op threads while fitting; None: 1 below SMALL_FIT_ROWS rows, else as is


# Below this many training rows a fit step is a few small matmuls: extra threads only add
# synchronisation, and on a shared, busy machine OpenMP spin-waits made fits 5-7x slower.
SMALL_FIT_ROWS = 200_000


@contextmanager
def _threads(cfg: TowerFitConfig, n_rows: int) -> Iterator[None]:
    before = torch.get_num_threads()
    n = cfg.threads if cfg.threads is not None else (1 if n_rows < SMALL_FIT_ROWS else before)
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bpr(pos: Tensor, neg: Tensor) -> Tensor:
    return -torch.nn.functional.logsigmoid(pos - neg).mean()


def fit_user_tower(
    histories: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    max_history: int,
    cfg: TowerFitConfig | None = None,
) -> UserTower:
    """Fit a UserTower (see ``_fit_user_tower``) with the thread policy of ``TowerFitConfig.threads``."""
    cfg = cfg or TowerFitConfig()
    with _threads(cfg, len(histories)):
        return _fit_user_tower(histories, user_vectors, item_vectors, max_history, cfg)


def _fit_user_tower(
    histories: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray, max_history: int, cfg: TowerFitConfig
) -> UserTower:
    """Fit a UserTower on users with a non-empty history; items stay frozen.

    Loss per batch: normalised MSE between the tower's output on the (dropout-thinned) history
    and the learned user vector, plus BPR of the dropped-out history items (or, where nothing was
    dropped, the input items) against random items.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tower = UserTower(item_vectors, max_history)
    h_all = torch.as_tensor(histories[:, :max_history], dtype=torch.long)
    has = (h_all >= 0).any(dim=1)
    users = torch.nonzero(has).squeeze(1)
    if len(users) == 0:
        return tower.eval()
    h_all, targets = h_all[users], torch.as_tensor(np.asarray(user_vectors, np.float32))[users]
    _init_from_ridge(tower, h_all, targets)
    scale = targets.pow(2).sum(dim=1).mean().clamp_min(1e-12)
    items = tower.table[:-1]
    n_items = items.shape[0]
    opt = torch.optim.Adam(tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(users) / cfg.batch_size)) * cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    tower.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(users), generator=g)
        for start in range(0, len(users), cfg.batch_size):
            b = perm[start : start + cfg.batch_size]
            h, tgt = h_all[b], targets[b]
            valid = h >= 0
            drop = (torch.rand(h.shape, generator=g) < cfg.history_dropout) & valid
            # never drop a user's whole history
            drop &= (valid & ~drop).any(dim=1, keepdim=True)
            h_in = torch.where(drop, torch.full_like(h, PAD), h)
            out = tower(h_in)
            loss = cfg.mse_weight * (out - tgt).pow(2).sum(dim=1).mean() / scale
            if cfg.bpr_weight > 0:
                pos_mask = torch.where(drop.any(dim=1, keepdim=True), drop, valid)
                rows, cols = torch.nonzero(pos_mask, as_tuple=True)
                pos_items = h[rows, cols]
                neg_items = torch.randint(0, n_items, (len(rows), cfg.n_negatives), generator=g)
                pos_s = (out[rows] * items[pos_items]).sum(-1, keepdim=True)
                neg_s = torch.einsum("bd,bkd->bk", out[rows], items[neg_items])
                loss = loss + cfg.bpr_weight * _bpr(pos_s, neg_s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return tower.eval()


@torch.no_grad()
def _init_from_ridge(tower: UserTower, histories: Tensor, targets: Tensor, rel_ridge: float = 1e-3) -> None:
    """Start the user tower at the ridge regression [pooled, 1] -> user vector (closed form).

    Why: the learned user vectors need not live at the item vectors' scale or orientation (FREEDOM's
    items have norms ~50x its users'); an identity start then sits far from any good solution and a
    few seconds of Adam do not get there. The ridge fit is exact for the initial (uniform) pooling,
    so training only has to learn recency weights and the non-linear correction.
    """
    pooled = torch.cat([tower.pool(histories[s : s + 4096])[0] for s in range(0, len(histories), 4096)])
    x = torch.cat([pooled, torch.ones(len(pooled), 1)], dim=1).double()
    xtx = x.T @ x
    lam = rel_ridge * torch.trace(xtx) / xtx.shape[0]
    w = torch.linalg.solve(xtx + lam * torch.eye(xtx.shape[0], dtype=xtx.dtype), x.T @ targets.double())
    d = pooled.shape[1]
    tower.proj.weight.copy_(w[:d].T.float())
    tower.proj.bias.copy_(w[d].float())
    tower.in_scale.fill_(1.0 / float(pooled.norm(dim=1).mean().clamp_min(1e-12)))


def feature_stats(features: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict:
    """Per-modality (mean, std) over `rows` (default all): the item tower's input standardisation."""
    out = {}
    for m, x in features.items():
        sub = x if rows is None else x[rows]
        out[m] = (sub.mean(axis=0).astype(np.float32), sub.std(axis=0).astype(np.float32))
    return out


def fit_item_tower(
    features: dict[str, np.ndarray],
    item_vectors: np.ndarray,
    train_rows: np.ndarray,
    user_vectors: np.ndarray | None = None,
    train_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    cfg: TowerFitConfig | None = None,
    hidden: int = 256,
) -> ItemTower:
    """Fit an ItemTower (see ``_fit_item_tower``) with the thread policy of ``TowerFitConfig.threads``."""
    cfg = cfg or TowerFitConfig()
    with _threads(cfg, len(train_rows)):
        return _fit_item_tower(features, item_vectors, train_rows, user_vectors, train_pairs, cfg, hidden)


def _fit_item_tower(
    features: dict[str, np.ndarray],
    item_vectors: np.ndarray,
    train_rows: np.ndarray,
    user_vectors: np.ndarray | None,
    train_pairs: tuple[np.ndarray, np.ndarray] | None,
    cfg: TowerFitConfig,
    hidden: int,
) -> ItemTower:
    """Fit an ItemTower on the items `train_rows` (items with trained vectors).

    MSE (normalised by the mean squared norm of the targets) to the item vectors; when
    `user_vectors` and `train_pairs` (user rows, item rows; only items in `train_rows`) are
    given, add BPR of the predicted item vector against the predicted vector of a random
    training item for that user, so that the tower preserves who likes what.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    tower = ItemTower(feature_stats(features, train_rows), int(item_vectors.shape[1]), hidden=hidden)
    feats = [torch.as_tensor(features[m]) for m in tower.modalities]
    target = torch.as_tensor(np.asarray(item_vectors, np.float32))
    scale = target[train_rows].pow(2).sum(dim=1).mean().clamp_min(1e-12)
    rows_t = torch.as_tensor(train_rows)
    use_bpr = cfg.bpr_weight > 0 and user_vectors is not None and train_pairs is not None and len(train_pairs[0]) > 0
    if use_bpr:
        uvec = torch.as_tensor(np.asarray(user_vectors, np.float32))
        pu = torch.as_tensor(np.asarray(train_pairs[0], np.int64))
        pi = torch.as_tensor(np.asarray(train_pairs[1], np.int64))
    opt = torch.optim.Adam(tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = max(1, math.ceil(len(train_rows) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_batches * cfg.epochs)
    tower.train()
    for _ in range(cfg.epochs):
        perm = rows_t[torch.randperm(len(rows_t), generator=g)]
        for start in range(0, len(perm), cfg.batch_size):
            b = perm[start : start + cfg.batch_size]
            out = tower(*(f[b] for f in feats))
            loss = cfg.mse_weight * (out - target[b]).pow(2).sum(dim=1).mean() / scale
            if use_bpr:
                k = torch.randint(0, len(pu), (cfg.batch_size,), generator=g)
                neg = rows_t[torch.randint(0, len(rows_t), (cfg.batch_size,), generator=g)]
                both = torch.cat([pi[k], neg])
                v = tower(*(f[both] for f in feats))
                u = uvec[pu[k]]
                pos_s = (u * v[: len(k)]).sum(-1)
                neg_s = (u * v[len(k) :]).sum(-1)
                loss = loss + cfg.bpr_weight * _bpr(pos_s, neg_s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return tower.eval()


@torch.no_grad()
def user_tower_vectors(tower: UserTower, histories: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Run the torch tower over histories (int64 [n, L]) in batches; float32 [n, d]."""
    h = torch.as_tensor(histories, dtype=torch.long)
    return torch.cat([tower(h[s : s + batch]) for s in range(0, len(h), batch)]).numpy()


@torch.no_grad()
def item_tower_vectors(tower: ItemTower, features: dict[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
    """Run the torch item tower over item rows (default all); float32 [n, d]."""
    xs = [torch.as_tensor(features[m] if rows is None else features[m][rows]) for m in tower.modalities]
    return tower(*xs).numpy()
