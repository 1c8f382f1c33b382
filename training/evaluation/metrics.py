"""Per-user top-K metrics from a hit matrix, exactly as the MMRec toolbox defines them.

Everything here is a pure function of

- ``hits``: bool/float [b, K_max]; ``hits[u, r]`` says whether the item ranked r+1 for user u
  is one of u's target items (the evaluated split), and
- ``pos_len``: int [b]; the number of target items of each user (|test_u|, always >= 1),

so that the same code serves the batched evaluator, the golden test and the property tests.
We compute in float64 because the golden numbers are checked to 1e-6 and MMRec itself works
in numpy float64.

Definitions (r = 1-based rank, hits_k = number of hits among the first k):

- Recall@k    = hits_k / |test_u|
- Precision@k = hits_k / k
- NDCG@k      = sum_{r<=k} hit_r / log2(r+1)  /  sum_{r<=min(|test_u|, k)} 1 / log2(r+1)
  (binary gains; ideal DCG over min(|test_u|, k) positions)
- MAP@k       = sum_{r<=k} hit_r * (hits_r / r)  /  min(k, |test_u|)
  This is MMRec's ``map_``: average precision with the 1/min(m, N) normaliser (m = |test_u|,
  N = k) instead of the 1/hits_k of textbook AP, so a user whose few target items are all
  ranked first scores 1 and a user with hits deep in the list is not rewarded for missing
  the others. It is *not* comparable with AP numbers computed with the textbook normaliser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


def validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated cut-offs; every K must be a positive int."""
    out = sorted({int(k) for k in ks})
    if not out:
        raise ValueError("ks must name at least one cut-off")
    if out[0] < 1:
        raise ValueError(f"every cut-off K must be >= 1, got {list(ks)}")
    return tuple(out)


def per_user_metrics(hits: Tensor, pos_len: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metric values (float64 [b]) for each metric and each K.

    Parameters
    ----------
    hits:
        bool or numeric [b, K_max] with K_max >= max(ks); 1 where the ranked item is a target.
    pos_len:
        int [b], number of target items per user; must be >= 1 (users without targets are
        skipped by the caller, as MMRec does).
    ks:
        cut-offs; each must be <= hits.shape[1].

    Returns
    -------
    dict with keys ``"recall@k"``, ``"ndcg@k"``, ``"precision@k"``, ``"map@k"``.
    """
    ks = validate_ks(ks)
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D [users, K], got shape {tuple(hits.shape)}")
    b, k_max = hits.shape
    if ks[-1] > k_max:
        raise ValueError(f"largest cut-off {ks[-1]} exceeds the ranked list length {k_max}")
    if pos_len.shape != (b,):
        raise ValueError(f"pos_len must have shape ({b},), got {tuple(pos_len.shape)}")
    device = hits.device
    h = hits.to(torch.float64)
    n_pos = pos_len.to(device=device, dtype=torch.float64)
    if b and bool((n_pos < 1).any()):
        raise ValueError("every evaluated user needs at least one target item (pos_len >= 1)")

    ranks = torch.arange(1, k_max + 1, device=device, dtype=torch.float64)  # [K_max]
    discount = 1.0 / torch.log2(ranks + 1.0)  # [K_max]
    cum_hits = h.cumsum(dim=1)  # [b, K_max]
    dcg = (h * discount).cumsum(dim=1)  # [b, K_max]
    ideal = discount.cumsum(dim=0)  # [K_max]; ideal[m-1] = IDCG with m relevant items
    sum_prec = (h * cum_hits / ranks).cumsum(dim=1)  # [b, K_max]; sum of P(r) over hit ranks

    out: dict[str, Tensor] = {}
    for k in ks:
        hk = cum_hits[:, k - 1]
        m = torch.clamp(n_pos, max=float(k))  # min(|test_u|, k)
        idx = (m.long() - 1).clamp(min=0)
        out[f"recall@{k}"] = hk / n_pos
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[idx]
        out[f"precision@{k}"] = hk / k
        out[f"map@{k}"] = sum_prec[:, k - 1] / m
    return out
