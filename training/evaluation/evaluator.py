"""The one evaluator every model is measured with: MMRec's full-ranking protocol, batched.

Protocol (identical to the MMRec toolbox, so numbers compare with the literature):

- full ranking over *all* items (no sampled negatives);
- at validation *and* at test only the user's TRAINING items are masked (set to -inf); the
  validation items stay candidates at test. ``mask_valid_at_test=True`` also masks them at
  test, which some papers do; it is off by default because MMRec does not;
- users without an item in the evaluated split are skipped (they are not even scored);
- per-user metrics are averaged over the evaluated users (see `metrics.py` for the formulas);
- the top-K list is ``torch.topk(scores, max(ks))``: ties between equal scores are broken by
  torch's topk order, as MMRec does. A user with fewer than K unmasked items gets masked
  (-inf) items at the tail of the list, again as in MMRec; they can never be hits unless
  the same (user, item) pair is also a target.

Beyond MMRec's four accuracy metrics the evaluator reports, per K:

- ``coverage@K``: fraction of the catalogue that appears in at least one evaluated user's
  top-K (how much of the catalogue the model ever surfaces);
- ``popularity@K``: mean, over evaluated users, of the mean *training-popularity percentile*
  of the user's top-K items. The percentile of an item is its average rank by training
  interaction count, scaled to [0, 1] (0 = least, 1 = most popular; tied counts share the
  average rank). Recommending at random gives about 0.5, most-popular gives about 1.0.

Memory stays bounded: users are processed in blocks of at most ``batch_users`` rows and at
most ``max_block_scores`` scores (so 100k users x 1M items never allocate a full score
matrix); each block is masked, cut to its top-K and discarded. Work happens on whatever
device the score function returns its tensor on (CPU or CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import rankdata
from torch import Tensor

from training.data.dataset import SPLIT_NAMES, TEST, TRAIN, VALID, InteractionDataset
from training.evaluation.metrics import METRIC_NAMES, per_user_metrics, validate_ks

ScoreFn = Callable[[Tensor], Tensor]
"""Maps int64 user rows [b] to float scores [b, n_items] (any device). The evaluator may
overwrite the returned tensor in place unless it is a view (then it copies it first)."""

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)
DEFAULT_MAX_BLOCK_SCORES = 1 << 26  # 64M scores = 256 MiB of float32 per block


def popularity_percentile(popularity: np.ndarray) -> np.ndarray:
    """float64 [n_items] in [0, 1]: average rank of each item's training count, scaled.

    Ties share their average rank, so all never-seen items get the same (low) percentile.
    """
    pop = np.asarray(popularity, dtype=np.float64)
    n = pop.shape[0]
    if n <= 1:
        return np.full(n, 0.5, dtype=np.float64)
    return (rankdata(pop, method="average") - 1.0) / (n - 1.0)


def _csr_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local row index, column) pairs of the given CSR rows, local rows 0..len(rows)-1 in order."""
    sub = m[rows]
    sub.sort_indices()
    local = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(sub.indptr))
    return local, sub.indices.astype(np.int64)


def hits_from_topk(topk_items: Tensor, target_keys: Tensor, n_items: int) -> Tensor:
    """bool [b, K]: is ``topk_items[r, j]`` a target of local row r?

    ``target_keys`` are the sorted int64 keys ``local_row * n_items + item`` of the block's
    targets. A sorted-key lookup avoids allocating a dense [b, n_items] target mask.
    """
    b, k = topk_items.shape
    if target_keys.numel() == 0:
        return torch.zeros((b, k), dtype=torch.bool, device=topk_items.device)
    rows = torch.arange(b, device=topk_items.device, dtype=torch.int64).unsqueeze(1)
    keys = rows * n_items + topk_items.to(torch.int64)
    pos = torch.searchsorted(target_keys, keys).clamp(max=target_keys.numel() - 1)
    return target_keys[pos] == keys


def metrics_from_topk(
    topk_items: Tensor, target_csr: sp.csr_matrix, users: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, Tensor]:
    """Per-user metrics (float64 [b]) for ranked lists ``topk_items`` [b, >= max(ks)] of ``users``.

    ``target_csr`` is the user x item matrix of the evaluated split; every listed user must
    have at least one target. Use this when a model produces ranked lists itself (an ANN
    index, a serving path) rather than dense scores.
    """
    users = np.asarray(users, dtype=np.int64)
    local, cols = _csr_rows(target_csr, users)
    n_items = target_csr.shape[1]
    keys = torch.as_tensor(local * n_items + cols, device=topk_items.device)
    hits = hits_from_topk(topk_items, keys, n_items)
    pos_len = torch.as_tensor(np.diff(target_csr.indptr)[users], device=topk_items.device)
    return per_user_metrics(hits, pos_len, ks)


def run_evaluation(
    score_fn: ScoreFn,
    mask_csr: sp.csr_matrix,
    target_csr: sp.csr_matrix,
    train_popularity: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 4096,
    max_block_scores: int = DEFAULT_MAX_BLOCK_SCORES,
    per_user_out: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Core loop shared by `evaluate` and `evaluate_scores`.

    Parameters
    ----------
    score_fn:
        user rows (int64 [b], CPU) -> scores [b, n_items] on any device.
    mask_csr:
        user x item matrix of the pairs to exclude from the ranking (training items).
    target_csr:
        user x item matrix of the evaluated split; users with an empty row are skipped.
    train_popularity:
        training interaction count per item, for ``popularity@K``.
    ks:
        cut-offs.
    batch_users:
        most users per block.
    max_block_scores:
        most scores per block; the block shrinks below ``batch_users`` for huge catalogues.
    per_user_out:
        if given, filled with "users" (int64 rows of the evaluated users) and one float64 array per
        accuracy metric, aligned with "users": what a paired per-user bootstrap between models needs.
    """
    ks = validate_ks(ks)
    n_users, n_items = target_csr.shape
    if mask_csr.shape != (n_users, n_items):
        raise ValueError(f"mask matrix shape {mask_csr.shape} differs from target shape {(n_users, n_items)}")
    if len(train_popularity) != n_items:
        raise ValueError(f"train_popularity has {len(train_popularity)} entries for {n_items} items")
    if batch_users < 1:
        raise ValueError(f"batch_users must be >= 1, got {batch_users}")
    k_max = min(ks[-1], n_items)
    if k_max < ks[-1]:
        raise ValueError(f"cut-off {ks[-1]} exceeds the number of items {n_items}")
    mask_csr = sp.csr_matrix(mask_csr)
    target_csr = sp.csr_matrix(target_csr)
    block = max(1, min(batch_users, max_block_scores // max(n_items, 1)))
    users = np.flatnonzero(np.diff(target_csr.indptr) > 0).astype(np.int64)
    pct_np = popularity_percentile(train_popularity)

    per_user: dict[str, list[Tensor]] = {}
    covered: dict[int, Tensor] = {}
    pct: Tensor | None = None
    for start in range(0, len(users), block):
        rows = users[start : start + block]
        with torch.no_grad():
            scores = score_fn(torch.as_tensor(rows))
            if scores.shape != (len(rows), n_items):
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(len(rows), n_items)}")
            if scores._base is not None or scores.requires_grad:
                scores = scores.detach().clone()
            dev = scores.device
            if not scores.is_floating_point():
                scores = scores.to(torch.float32)
            m_rows, m_cols = _csr_rows(mask_csr, rows)
            if len(m_rows):
                scores[torch.as_tensor(m_rows, device=dev), torch.as_tensor(m_cols, device=dev)] = float("-inf")
            topk = torch.topk(scores, k_max, dim=1).indices  # [b, k_max]
            del scores
            values = metrics_from_topk(topk, target_csr, rows, ks)
            if pct is None:
                pct = torch.as_tensor(pct_np, device=dev)
                covered = {k: torch.zeros(n_items, dtype=torch.bool, device=dev) for k in ks}
            for k in ks:
                covered[k][topk[:, :k].reshape(-1)] = True
                values[f"popularity@{k}"] = pct[topk[:, :k]].mean(dim=1)
            for name, v in values.items():
                per_user.setdefault(name, []).append(v.detach().to("cpu", torch.float64))

    result: dict[str, float] = {}
    for name in METRIC_NAMES:
        for k in ks:
            key = f"{name}@{k}"
            result[key] = float(torch.cat(per_user[key]).mean()) if users.size else 0.0
    for k in ks:
        result[f"coverage@{k}"] = float(covered[k].sum()) / n_items if users.size else 0.0
        key = f"popularity@{k}"
        result[key] = float(torch.cat(per_user[key]).mean()) if users.size else 0.0
    result["n_users"] = int(users.size)
    if per_user_out is not None:
        per_user_out["users"] = users
        for name in METRIC_NAMES:
            for k in ks:
                key = f"{name}@{k}"
                per_user_out[key] = torch.cat(per_user[key]).numpy() if users.size else np.zeros(0)
    return result


def mask_and_target(
    dataset: InteractionDataset, split: int, mask_valid_at_test: bool = False
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(pairs to mask, pairs to find) for evaluating ``split`` under the protocol above."""
    if split not in (VALID, TEST):
        raise ValueError(f"can only evaluate the valid ({VALID}) or test ({TEST}) split, got {split}")
    masked = (TRAIN, VALID) if (split == TEST and mask_valid_at_test) else TRAIN
    return dataset.csr(masked), dataset.csr(split)


def evaluate(
    score_fn: ScoreFn,
    dataset: InteractionDataset,
    split: int = TEST,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 4096,
    mask_valid_at_test: bool = False,
    max_block_scores: int = DEFAULT_MAX_BLOCK_SCORES,
) -> dict[str, float]:
    """Evaluate a model, given as a score function, on the valid or test split of ``dataset``.

    Returns a flat dict: ``recall@K``, ``ndcg@K``, ``precision@K``, ``map@K``, ``coverage@K``,
    ``popularity@K`` for each K in ``ks``, plus ``n_users`` (evaluated users).

    ``mask_valid_at_test``: also mask the validation items when ``split == TEST`` (off by
    default: MMRec keeps them as candidates).
    """
    mask, target = mask_and_target(dataset, split, mask_valid_at_test)
    return run_evaluation(
        score_fn, mask, target, dataset.item_popularity(), ks, batch_users, max_block_scores=max_block_scores
    )


def evaluate_scores(
    scores: Tensor | np.ndarray,
    train_csr: sp.csr_matrix,
    target_csr: sp.csr_matrix,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 4096,
) -> dict[str, float]:
    """Evaluate a fixed score matrix [n_users, n_items] (rows = user rows of the CSR matrices).

    ``train_csr`` items are masked and also define ``popularity@K``; ``target_csr`` holds the
    evaluated split.
    """
    s = torch.as_tensor(scores)
    if s.ndim != 2 or tuple(s.shape) != tuple(target_csr.shape):
        raise ValueError(f"scores shape {tuple(s.shape)} differs from target matrix shape {target_csr.shape}")
    pop = np.asarray(sp.csr_matrix(train_csr).sum(axis=0)).ravel()

    def score_fn(users: Tensor) -> Tensor:
        return s[users.to(s.device)]  # advanced indexing copies, so masking cannot touch `scores`

    return run_evaluation(score_fn, train_csr, target_csr, pop, ks, batch_users)


def evaluate_splits(
    score_fn: ScoreFn,
    dataset: InteractionDataset,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 4096,
    mask_valid_at_test: bool = False,
) -> dict[str, dict[str, float]]:
    """{"valid": metrics, "test": metrics}: the usual pair reported for a trained model."""
    return {SPLIT_NAMES[s]: evaluate(score_fn, dataset, s, ks, batch_users, mask_valid_at_test) for s in (VALID, TEST)}
