"""The one in-memory dataset type every loader produces and every model consumes.

Internal ids are dense 0-based rows (user row u, item row i); external ids are strings
kept only for the id maps, so that the artifact can translate back to the shop's ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


class DataError(ValueError):
    """Invalid input data. The message names the file (and line, where known) and the problem."""


@dataclass(frozen=True)
class InteractionDataset:
    """Implicit-feedback interactions plus per-modality item features.

    Attributes
    ----------
    name:
        Dataset name (the MMRec `<name>.inter` stem, or a loader's choice).
    users, items:
        int64 [n] internal user/item rows of each interaction.
    timestamps:
        int64 [n] unix seconds (0 where the source has none).
    splits:
        int8 [n] with values TRAIN (0), VALID (1), TEST (2).
    user_ids, item_ids:
        External ids as strings; index = internal row.
    features:
        modality name -> float32 [n_items, d_m]; row i belongs to item row i.
    warnings:
        Human-readable notes from loading (dropped duplicates, dropped users, ...).
    item_meta:
        Display fields per item row (title, category, url, ...; see mrdib/item_meta.py), or None when the
        dataset has none. Not part of the fingerprint: it never changes what a model learns.
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    splits: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    features: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)
    item_meta: list[dict] | None = None

    def __post_init__(self) -> None:
        n = len(self.users)
        for attr in ("items", "timestamps", "splits"):
            if len(getattr(self, attr)) != n:
                raise ValueError(f"{attr} has {len(getattr(self, attr))} rows, users has {n}")
        if not self.features:
            raise ValueError("at least one modality is required")
        for m, x in self.features.items():
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != self.n_items:
                raise ValueError(f"features[{m!r}] must be float32 [{self.n_items}, d], got {x.dtype} {x.shape}")
        if self.item_meta is not None and len(self.item_meta) != self.n_items:
            raise ValueError(f"item_meta has {len(self.item_meta)} records for {self.n_items} items")

    @classmethod
    def from_pairs(
        cls,
        users: object,
        items: object,
        splits: object,
        features: dict[str, np.ndarray],
        n_users: int,
        name: str = "inline",
    ) -> InteractionDataset:
        """A dataset built in code (tests, generators): ids "u<row>"/"i<row>", no timestamps."""
        u = np.asarray(users, dtype=np.int64)
        n_items = next(iter(features.values())).shape[0]
        return cls(
            name=name,
            users=u,
            items=np.asarray(items, dtype=np.int64),
            timestamps=np.zeros(len(u), dtype=np.int64),
            splits=np.asarray(splits, dtype=np.int8),
            user_ids=[f"u{r}" for r in range(n_users)],
            item_ids=[f"i{r}" for r in range(n_items)],
            features=features,
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    def split_pairs(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) of one split."""
        mask = self.splits == split
        return self.users[mask], self.items[mask]

    def csr(self, split: int | tuple[int, ...] = TRAIN) -> sp.csr_matrix:
        """Binary user x item matrix of one or several splits (float32 CSR, sorted indices)."""
        splits = (split,) if isinstance(split, int) else split
        mask = np.isin(self.splits, splits)
        m = sp.csr_matrix(
            (np.ones(int(mask.sum()), dtype=np.float32), (self.users[mask], self.items[mask])),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        return m

    def train_csr(self) -> sp.csr_matrix:
        return self.csr(TRAIN)

    def recent_first(self, splits: tuple[int, ...] = (TRAIN,)) -> tuple[np.ndarray, np.ndarray]:
        """(indptr [n_users+1], indices) of each user's items, most recent first.

        The user tower reads histories in this order, so the artifact stores training items this
        way too. Timestamp ties keep the file order reversed (a later line counts as more recent),
        which keeps the order deterministic for datasets without timestamps.
        """
        mask = np.isin(self.splits, splits)
        u, i, t = self.users[mask], self.items[mask], self.timestamps[mask]
        order = np.lexsort((-np.arange(len(u)), -t, u))
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=self.n_users), out=indptr[1:])
        return indptr, i[order].astype(np.int64)

    def item_popularity(self) -> np.ndarray:
        """int64 [n_items] training interaction counts."""
        _, i = self.split_pairs(TRAIN)
        return np.bincount(i, minlength=self.n_items).astype(np.int64)

    def counts(self) -> dict[str, int]:
        return {SPLIT_NAMES[s]: int((self.splits == s).sum()) for s in (TRAIN, VALID, TEST)}

    def fingerprint(self) -> str:
        """sha256 over interactions, splits, ids and features: identifies the exact training data."""
        h = hashlib.sha256()
        for arr in (self.users, self.items, self.timestamps, self.splits):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.user_ids).encode())
        h.update("\n".join(self.item_ids).encode())
        for m in sorted(self.features):
            h.update(m.encode())
            h.update(np.ascontiguousarray(self.features[m]).tobytes())
        return h.hexdigest()
