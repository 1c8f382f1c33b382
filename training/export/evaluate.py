"""Recall@K for export-time reports (towers against learned vectors, cold-start items).

Full ranking with the user's known items masked, Recall@K = hits / |targets| (the MMRec
definition used everywhere in this project), averaged over users with at least one target.
Pure numpy so that it can score vectors coming from torch, ONNX Runtime or FAISS alike.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def recall_at_k(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    targets: sp.csr_matrix,
    exclude: sp.csr_matrix | None = None,
    k: int = 20,
    candidates: np.ndarray | None = None,
    batch: int = 1024,
) -> float:
    """Mean Recall@k over the users (rows of `targets`) that have a target item.

    Parameters
    ----------
    user_vectors, item_vectors:
        float32 [n_users, d] and [n_items, d]; score = inner product.
    targets:
        binary user x item CSR of the items to find (e.g. the test split).
    exclude:
        binary user x item CSR of items never recommended (e.g. train + valid); optional.
    k:
        cut-off.
    candidates:
        optional bool [n_items]: rank only these items (cold-start protocol); targets outside
        the candidates are dropped, users left without targets are skipped.
    """
    targets = sp.csr_matrix(targets)
    if candidates is not None:
        targets = targets @ sp.diags(candidates.astype(np.float32))
        targets.eliminate_zeros()
    n_pos = np.diff(targets.indptr)
    users = np.flatnonzero(n_pos > 0)
    if len(users) == 0:
        return float("nan")
    recalls = np.empty(len(users))
    k_eff = min(k, item_vectors.shape[0])
    for s in range(0, len(users), batch):
        b = users[s : s + batch]
        scores = user_vectors[b] @ item_vectors.T
        if exclude is not None:
            ex = exclude[b]
            scores[np.repeat(np.arange(len(b)), np.diff(ex.indptr)), ex.indices] = -np.inf
        if candidates is not None:
            scores[:, ~candidates] = -np.inf
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        hit = np.asarray(targets[b][np.arange(len(b))[:, None], top].sum(axis=1)).ravel()
        recalls[s : s + len(b)] = hit / n_pos[b]
    return float(recalls.mean())
