"""The admin side-index record (PUT /items), shared by the service that writes it and `mrdib retrain` that
merges it: one format in one place, like the artifact manifest.

Redis keys (under the service's key prefix, one hash slot: mrdib/redis_keys.py): ``{items}:side`` (hash: item
id -> record), ``{items}:deleted`` (set of hidden ids), ``{items}:ver`` (change counter). A record is JSON
``{"features": {modality: [floats]}, "put_at": ISO time, "meta": {field: value}}``: features, not vectors, so
that every model version embeds them with its own item tower. ``meta`` (optional, the display fields of
mrdib/item_meta.py) replaces the item's catalogue fields when present; a record without it (also every record
written before metadata existed) keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from mrdib.item_meta import ItemMetaError, MetaRecord, validate_fields
from mrdib.redis_keys import KeyLayout


@dataclass(frozen=True)
class SideItem:
    """A PUT item: its modality features, when it was put (to tell whether a model was trained on it), and its
    display fields (None: the PUT carried none, the catalogue's stay)."""

    features: Mapping[str, np.ndarray]
    put_at: datetime
    meta: MetaRecord | None = None


def side_item_keys(prefix: str = "") -> tuple[str, str, str]:
    """(side items hash, deleted ids set, change counter) under the service's Redis key prefix."""
    return KeyLayout(prefix=prefix).item_keys()


def encode_side(item: SideItem) -> str:
    record: dict = {"features": {m: np.asarray(v, np.float32).tolist() for m, v in item.features.items()},
                    "put_at": item.put_at.isoformat()}
    if item.meta is not None:
        record["meta"] = item.meta
    return json.dumps(record, ensure_ascii=False)


def decode_side(raw: bytes | str) -> SideItem:
    """Inverse of `encode_side`; ValueError naming the problem for anything the service would not write."""
    try:
        d = json.loads(raw)
        feats = {str(m): np.asarray(v, dtype=np.float32) for m, v in d["features"].items()}
        put_at = datetime.fromisoformat(d["put_at"])
        meta = None if d.get("meta") is None else validate_fields(d["meta"], "meta")
    except ItemMetaError as e:
        raise ValueError(f"unreadable side item record: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"unreadable side item record: {type(e).__name__}: {e}") from None
    if not feats or any(v.ndim != 1 for v in feats.values()):
        raise ValueError("unreadable side item record: features must be one flat list per modality")
    return SideItem(feats, put_at if put_at.tzinfo else put_at.replace(tzinfo=UTC), meta)
