"""Shared helpers of the `eval` tests: shared-data lookup, tiny datasets, brute-force metrics."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from training.data.dataset import TEST, TRAIN, VALID, InteractionDataset


def shared_data() -> Path | None:
    """The shared data folder (../shared/data next to the repo, or $MRDIB_SHARED_DATA), if present."""
    p = Path(__file__).resolve().parents[2] / "shared" / "data"
    if p.is_dir():
        return p
    env = os.environ.get("MRDIB_SHARED_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    return None


def brute_force_metrics(ranking: list[int], targets: set[int], k: int) -> dict[str, float]:
    """Textbook, loop-by-loop definitions (MMRec's normalisers) for one user at cut-off k."""
    hits = [1 if item in targets else 0 for item in ranking[:k]]
    n_hit = sum(hits)
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(len(targets), k)))
    ap = 0.0
    for r, h in enumerate(hits):
        if h:
            ap += sum(hits[: r + 1]) / (r + 1)
    return {
        "recall": n_hit / len(targets),
        "precision": n_hit / k,
        "ndcg": dcg / idcg,
        "map": ap / min(len(targets), k),
    }


def make_dataset(
    triples: list[tuple[int, int, int]], n_users: int, n_items: int, features: dict[str, np.ndarray] | None = None
) -> InteractionDataset:
    """InteractionDataset from (user, item, split) triples; default feature: a random 4-d modality."""
    arr = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    if features is None:
        features = {"f": np.random.default_rng(0).normal(size=(n_items, 4)).astype(np.float32)}
    return InteractionDataset.from_pairs(arr[:, 0], arr[:, 1], arr[:, 2], features, n_users, name="tiny")


def random_dataset(n_users: int, n_items: int, per_user: int, seed: int) -> InteractionDataset:
    """Each user gets ``per_user`` distinct random items, split roughly 8:1:1 (at least one train)."""
    rng = np.random.default_rng(seed)
    triples = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        labels = rng.choice([TRAIN] * 8 + [VALID, TEST], size=per_user)
        labels[0] = TRAIN
        triples += [(u, int(i), int(s)) for i, s in zip(items, labels, strict=True)]
    return make_dataset(triples, n_users, n_items)


def planted_clusters(
    n_clusters: int = 4, users_per: int = 50, items_per: int = 50, per_user: int = 12, seed: int = 0
) -> InteractionDataset:
    """Users of cluster c only interact with items of cluster c (per_user items: n-2 train, 1 valid, 1 test).

    Item features are the cluster's random centroid plus small noise, so content ItemKNN can
    find the pattern too. A model that learns the clusters reaches Recall@10 near
    10 / items_per; random ranking gets about 10 / n_items.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = n_clusters * users_per, n_clusters * items_per
    triples = []
    for u in range(n_users):
        c = u // users_per
        items = c * items_per + rng.choice(items_per, size=per_user, replace=False)
        labels = [TRAIN] * (per_user - 2) + [VALID, TEST]
        triples += [(u, int(i), s) for i, s in zip(items, labels, strict=True)]
    centroids = rng.normal(size=(n_clusters, 16))
    feats = centroids[np.arange(n_items) // items_per] + 0.3 * rng.normal(size=(n_items, 16))
    return make_dataset(triples, n_users, n_items, {"content": feats.astype(np.float32)})
