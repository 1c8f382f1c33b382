"""Admin item changes (PUT/DELETE /items): where they are kept, so that every worker applies them.

With ``--workers N`` each worker is its own process with its own overlay; a change that lived only in
the worker that received it would be visible to 1/N of the requests. So with Redis configured the
change log IS Redis:

* ``items:side``    hash   item id -> JSON ``{"features": {modality: [floats]}, "put_at": ISO time}``
* ``items:deleted`` set    ids hidden from every result
* ``items:ver``     counter incremented by every change (one Lua script per change: atomic)

Features, not vectors, are stored: every model version embeds them with its own item tower (and caches
the result per version, see model_store.py). Each worker polls ``items:ver`` (one GET every
``MRDIB_ITEM_SYNC_INTERVAL_S``) and, when it differs from what it applied, reads the whole log in one
MULTI (a consistent snapshot) and rebuilds its overlay; the worker that received the change does so at
once. While Redis is down a change cannot be shared, so it is refused (503) rather than applied to one
worker only.

Without Redis (embedded demo, one process) the log is a plain in-process one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import structlog

from service.redis_link import REDIS_DOWN, RedisLink

log = structlog.get_logger("mrdib.service.items")

# KEYS: side, deleted, ver.  ARGV: item id, payload.
_PUT_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('INCR', KEYS[3])
"""
# KEYS: side, deleted, ver.  ARGV: item id.  Returns {1 if it was a side item else 0, new version}.
_DELETE_LUA = """
local had = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return {had, redis.call('INCR', KEYS[3])}
"""


class ItemLogUnavailable(RuntimeError):
    """The shared change log (Redis) cannot be written now: the change would reach one worker only."""


@dataclass(frozen=True)
class SideItem:
    """A PUT item: its modality features and when it was put (to tell whether a model was trained after)."""

    features: Mapping[str, np.ndarray]
    put_at: datetime


@dataclass(frozen=True)
class ItemChanges:
    """A snapshot of every admin change; `version` orders snapshots of one log."""

    side: Mapping[str, SideItem] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    version: int = 0


def encode_side(item: SideItem) -> str:
    return json.dumps({"features": {m: np.asarray(v, np.float32).tolist() for m, v in item.features.items()},
                       "put_at": item.put_at.isoformat()})


def decode_side(raw: bytes | str) -> SideItem:
    """Inverse of `encode_side`; ValueError (naming the problem) for anything else."""
    try:
        d = json.loads(raw)
        feats = {str(m): np.asarray(v, dtype=np.float32) for m, v in d["features"].items()}
        put_at = datetime.fromisoformat(d["put_at"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"unreadable side item record: {type(e).__name__}: {e}") from e
    if any(v.ndim != 1 for v in feats.values()):
        raise ValueError("unreadable side item record: features must be flat lists")
    return SideItem(feats, put_at if put_at.tzinfo else put_at.replace(tzinfo=UTC))


class ItemChangeLog:
    """Interface: record a change (returns the resulting snapshot) and tell whether there is a newer one."""

    async def put(self, item_id: str, features: Mapping[str, np.ndarray]) -> ItemChanges:
        raise NotImplementedError

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        """Hide `item_id`; also says whether it was a side item."""
        raise NotImplementedError

    async def newer_than(self, version: int) -> ItemChanges | None:
        """The current snapshot if its version differs from `version`, else None (the cheap, frequent case)."""
        raise NotImplementedError


class LocalItemLog(ItemChangeLog):
    """One process, no Redis: the log is this object."""

    def __init__(self) -> None:
        self._state = ItemChanges()

    async def put(self, item_id: str, features: Mapping[str, np.ndarray]) -> ItemChanges:
        s = self._state
        side = {**s.side, item_id: SideItem(dict(features), datetime.now(UTC))}
        self._state = ItemChanges(side, s.deleted - {item_id}, s.version + 1)
        return self._state

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        s = self._state
        had = item_id in s.side
        side = {k: v for k, v in s.side.items() if k != item_id}
        self._state = ItemChanges(side, s.deleted | {item_id}, s.version + 1)
        return self._state, had

    async def newer_than(self, version: int) -> ItemChanges | None:
        return None if self._state.version == version else self._state


class RedisItemLog(ItemChangeLog):
    """The log in Redis, shared by every worker (and every replica) using the same key prefix."""

    def __init__(self, link: RedisLink):
        self.link = link
        self.keys = list(link.items_keys())
        self._put = link.client.register_script(_PUT_LUA)
        self._delete = link.client.register_script(_DELETE_LUA)

    async def put(self, item_id: str, features: Mapping[str, np.ndarray]) -> ItemChanges:
        payload = encode_side(SideItem(features, datetime.now(UTC)))
        try:
            await self._put(keys=self.keys, args=[item_id, payload])
            return await self.snapshot()
        except REDIS_DOWN as e:
            self.link.mark_down("put_item", e)
            raise ItemLogUnavailable(f"Redis is unavailable ({type(e).__name__}); item changes must reach "
                                     "every worker, retry when /readyz says redis ok") from e

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        try:
            had, _ = await self._delete(keys=self.keys, args=[item_id])
            return await self.snapshot(), bool(had)
        except REDIS_DOWN as e:
            self.link.mark_down("delete_item", e)
            raise ItemLogUnavailable(f"Redis is unavailable ({type(e).__name__}); item changes must reach "
                                     "every worker, retry when /readyz says redis ok") from e

    async def newer_than(self, version: int) -> ItemChanges | None:
        raw = await self.link.client.get(self.keys[2])
        if int(raw or 0) == version:
            return None
        return await self.snapshot()

    async def snapshot(self) -> ItemChanges:
        """Everything, read in one MULTI so that the counter matches the contents."""
        side_key, deleted_key, ver_key = self.keys
        async with self.link.client.pipeline(transaction=True) as pipe:
            pipe.get(ver_key)
            pipe.hgetall(side_key)
            pipe.smembers(deleted_key)
            ver, side_raw, deleted_raw = await pipe.execute()
        side: dict[str, SideItem] = {}
        for k, v in side_raw.items():
            item_id = k.decode("utf-8", "replace")
            try:
                side[item_id] = decode_side(v)
            except ValueError as e:  # written by something else than this service: skip it, say so
                log.error("side_item_unreadable", key=side_key, item_id=item_id, error=str(e))
        deleted = frozenset(x.decode("utf-8", "replace") for x in deleted_raw)
        return ItemChanges(side, deleted, int(ver or 0))
