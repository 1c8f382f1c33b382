"""Per-user online state: the cached user vector and the list of recent events.

Two backends behind one interface:

* `RedisUserState`: vectors as raw float32 bytes under ``uvec:{version}:{user}`` with a TTL
  (the version in the key means a model swap can never serve a vector of another model), the
  recent-event list under ``hist:{user}`` (most recent first, capped; written by events.py).
  Both are read in ONE pipelined round trip. Any Redis failure degrades to the local state
  (`cached: false`, vector recomputed), it never raises.
* `LocalUserState`: an in-process LRU, the embedded default when REDIS_URL is unset.

A local mirror of recent events (`LocalHistory`) is always kept, so that while Redis is down
this process still reflects the events it accepted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from service.redis_link import REDIS_DOWN, RedisLink


@dataclass(frozen=True)
class UserState:
    vector: np.ndarray | None  # cached user vector of this model version, if any
    recent: list[str]  # recent event item ids, most recent first


class LocalHistory:
    """Bounded in-process mirror: user -> recent item ids (most recent first)."""

    def __init__(self, cap: int, max_users: int):
        self.cap = cap
        self.max_users = max_users
        self._data: OrderedDict[str, deque[str]] = OrderedDict()

    def push(self, user: str, item: str) -> None:
        q = self._data.pop(user, None) or deque(maxlen=self.cap)
        q.appendleft(item)
        self._data[user] = q
        while len(self._data) > self.max_users:
            self._data.popitem(last=False)

    def get(self, user: str) -> list[str]:
        q = self._data.get(user)
        return list(q) if q else []


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: tuple[str, str], v: np.ndarray) -> None:
        self._data[key] = v
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop_user(self, user: str) -> None:
        for key in [k for k in self._data if k[1] == user]:
            del self._data[key]


class UserStateStore:
    """Interface: read a user's state, cache its vector, forget it after an event."""

    history: LocalHistory

    async def get(self, version: str, user: str, dim: int) -> UserState:
        raise NotImplementedError

    async def put_vector(self, version: str, user: str, vector: np.ndarray) -> None:
        raise NotImplementedError

    def forget_local(self, user: str) -> None:
        """Drop what this process holds for `user` (called after every accepted event)."""
        raise NotImplementedError


class LocalUserState(UserStateStore):
    def __init__(self, lru_size: int, history: LocalHistory):
        self.history = history
        self._lru = _LRU(lru_size)

    async def get(self, version: str, user: str, dim: int) -> UserState:
        v = self._lru.get((version, user))
        return UserState(v if v is not None and v.shape == (dim,) else None, self.history.get(user))

    async def put_vector(self, version: str, user: str, vector: np.ndarray) -> None:
        self._lru.put((version, user), vector.astype(np.float32, copy=True))

    def forget_local(self, user: str) -> None:
        self._lru.drop_user(user)


class RedisUserState(UserStateStore):
    """Redis-backed state; `usable()` is false while Redis is down or events still wait in the WAL
    (reading the cache then could return a vector that a not-yet-replayed event invalidates)."""

    def __init__(self, link: RedisLink, history: LocalHistory, ttl_s: int, history_cap: int, backlog: callable):
        self.link = link
        self.history = history
        self.ttl_s = ttl_s
        self.history_cap = history_cap
        self._backlog = backlog

    def usable(self) -> bool:
        return self.link.up and self._backlog() == 0

    async def get(self, version: str, user: str, dim: int) -> UserState:
        if not self.usable():
            return UserState(None, self.history.get(user))
        try:
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.get(self.link.uvec_key(version, user))
                pipe.lrange(self.link.hist_key(user), 0, self.history_cap - 1)
                raw, recent = await pipe.execute()
        except REDIS_DOWN as e:
            self.link.mark_down("get_user", e)
            return UserState(None, self.history.get(user))
        vec = None
        if raw is not None and len(raw) == 4 * dim:
            vec = np.frombuffer(raw, dtype=np.float32).copy()
        return UserState(vec, [r.decode("utf-8", "replace") for r in recent])

    async def put_vector(self, version: str, user: str, vector: np.ndarray) -> None:
        if not self.usable():
            return
        try:
            await self.link.client.set(self.link.uvec_key(version, user),
                                       np.ascontiguousarray(vector, np.float32).tobytes(), ex=self.ttl_s)
        except REDIS_DOWN as e:
            self.link.mark_down("put_vector", e)

    def forget_local(self, user: str) -> None:
        """Nothing: vectors live only in Redis, invalidated by the event script itself."""
