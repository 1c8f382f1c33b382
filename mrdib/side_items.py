"""The admin side-index record (PUT /items), shared by the service that writes it and `mrdib retrain` that
merges it: one format in one place, like the artifact manifest.

Redis keys (under the service's key prefix): ``items:side`` (hash: item id -> record), ``items:deleted``
(set of hidden ids), ``items:ver`` (change counter). A record is JSON
``{"features": {modality: [floats]}, "put_at": ISO time}``: features, not vectors, so that every model
version embeds them with its own item tower.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np


@dataclass(frozen=True)
class SideItem:
    """A PUT item: its modality features and when it was put (to tell whether a model was trained on it)."""

    features: Mapping[str, np.ndarray]
    put_at: datetime


def side_item_keys(prefix: str = "") -> tuple[str, str, str]:
    """(side items hash, deleted ids set, change counter) under the service's Redis key prefix."""
    return f"{prefix}items:side", f"{prefix}items:deleted", f"{prefix}items:ver"


def encode_side(item: SideItem) -> str:
    return json.dumps({"features": {m: np.asarray(v, np.float32).tolist() for m, v in item.features.items()},
                       "put_at": item.put_at.isoformat()})


def decode_side(raw: bytes | str) -> SideItem:
    """Inverse of `encode_side`; ValueError naming the problem for anything the service would not write."""
    try:
        d = json.loads(raw)
        feats = {str(m): np.asarray(v, dtype=np.float32) for m, v in d["features"].items()}
        put_at = datetime.fromisoformat(d["put_at"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"unreadable side item record: {type(e).__name__}: {e}") from None
    if not feats or any(v.ndim != 1 for v in feats.values()):
        raise ValueError("unreadable side item record: features must be one flat list per modality")
    return SideItem(feats, put_at if put_at.tzinfo else put_at.replace(tzinfo=UTC))
