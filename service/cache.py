"""Per-user online state: the cached user vector and the list of recent events.

Two backends behind one interface:

* `RedisUserState`: the cached state of a user is ONE hash ``uvec:<user>`` with a field per model
  version; its value is the float32 vector followed by the recent-event ids it was computed with
  (JSON). A warm request is therefore one HGET, nothing else. The event script (events.py) deletes
  the whole hash, so no version -- also one still served by another worker during a roll-out -- can
  serve a vector an event made stale; and it increments ``uev:<user>``, which the cache write
  compares (Lua), so a vector computed from state read *before* an event is never cached *after*
  it. On a miss the recent-event list ``hist:<user>`` and the counter are read in one pipelined
  round trip. Any Redis failure degrades to the local state (`cached: false`), it never raises.
  In front of Redis sits a small in-process *near cache* of the same values, so that a warm request
  of a user this worker served recently costs no round trip at all (the Redis call was ~half of the
  CPU of a warm request, docs/BENCHMARKS.md). It is kept coherent by invalidation messages: the event
  script PUBLISHes the user id on ``uinval``, every worker subscribes and drops that user. Guarantees:
  the worker that accepted an event never serves the pre-event vector after the 202 (it drops the
  user itself, before and after the Redis write); another worker drops it when the message arrives
  (pub/sub delivery, sub-millisecond on one host). A read that overlapped any invalidation is not
  kept; while the subscription is not live (Redis down, reconnecting) the near cache is emptied and
  bypassed; every entry also expires after `MRDIB_NEAR_CACHE_TTL_S` (0 disables the near cache).
* `LocalUserState`: an in-process LRU, the embedded default when REDIS_URL is unset.

A local mirror of recent events (`LocalHistory`) is always kept, so that while Redis is down
this process still reflects the events it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from mrdib.artifact.bounds import vector_problem
from service.redis_link import REDIS_DOWN, RedisLink

log = structlog.get_logger("mrdib.service.cache")


@dataclass(frozen=True)
class UserState:
    vector: np.ndarray | None  # cached user vector of this model version, if any
    recent: list[str]  # recent event item ids, most recent first
    token: str | None = None  # Redis: the user's event counter when `recent` was read (guards the cache write)
    seq: int = -1  # near cache: invalidations seen by this process when the read started


# KEYS: uvec hash, event counter.  ARGV: version field, value, ttl, counter value read with the state.
_PUT_LUA = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def encode_state(vector: np.ndarray, recent: list[str]) -> bytes:
    """Cached value: float32 vector bytes, then the recent ids (JSON) the vector was computed with."""
    return np.ascontiguousarray(vector, np.float32).tobytes() + json.dumps(recent).encode()


def decode_state(raw: bytes, dim: int) -> tuple[np.ndarray, list[str]] | None:
    """Inverse of `encode_state`; None for a value that does not fit `dim` (another model's, or damaged) or whose
    vector could not be served (Redis is shared: a damaged or planted value is a cache miss, recomputed and
    overwritten, never scores that overflow)."""
    if len(raw) < 4 * dim + 2:
        return None
    try:
        recent = json.loads(raw[4 * dim:])
    except ValueError:
        return None
    if not isinstance(recent, list):
        return None
    vector = np.frombuffer(raw, dtype=np.float32, count=dim)
    if vector_problem(vector) is not None:
        return None
    return vector, [str(x) for x in recent]


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
    """user -> {model version -> vector}, least recently used user evicted first. Keyed by user so that an
    event drops every version of that user in O(1) (a scan over (version, user) keys was O(cache size))."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def get(self, version: str, user: str) -> np.ndarray | None:
        per_version = self._data.get(user)
        if per_version is None:
            return None
        self._data.move_to_end(user)
        return per_version.get(version)

    def put(self, version: str, user: str, v: np.ndarray) -> None:
        self._data.setdefault(user, {})[version] = v
        self._data.move_to_end(user)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop_user(self, user: str) -> None:
        self._data.pop(user, None)


class UserStateStore:
    """Interface: read a user's state, cache its vector, forget it after an event."""

    history: LocalHistory

    async def get(self, version: str, user: str, dim: int) -> UserState:
        raise NotImplementedError

    async def put_vector(self, version: str, user: str, vector: np.ndarray, state: UserState) -> None:
        """Cache `vector`, computed from `state` (its recent list and token), unless an event came since."""
        raise NotImplementedError

    async def get_many(self, version: str, users: list[str], dim: int) -> list[UserState]:
        """`get` of several users (the batch route); Redis: one pipelined round trip (two when some miss)."""
        return [await self.get(version, u, dim) for u in users]

    async def put_many(self, version: str, writes: list[tuple[str, np.ndarray, UserState]]) -> None:
        """`put_vector` of several (user, vector, state); Redis: one pipelined round trip."""
        for user, vector, st in writes:
            await self.put_vector(version, user, vector, st)

    def forget_local(self, user: str) -> None:
        """Drop what this process holds for `user` (called after every accepted event)."""
        raise NotImplementedError


class LocalUserState(UserStateStore):
    def __init__(self, lru_size: int, history: LocalHistory):
        self.history = history
        self._lru = _LRU(lru_size)

    async def get(self, version: str, user: str, dim: int) -> UserState:
        v = self._lru.get(version, user)
        return UserState(v if v is not None and v.shape == (dim,) else None, self.history.get(user))

    async def put_vector(self, version: str, user: str, vector: np.ndarray, state: UserState) -> None:
        # One process, one event loop: no event can have run between this request's read and this write.
        self._lru.put(version, user, vector.astype(np.float32, copy=True))

    def forget_local(self, user: str) -> None:
        self._lru.drop_user(user)


class _NearCache:
    """user -> {version -> (vector, recent, expiry)}; bounded LRU; `seq` counts invalidations seen."""

    def __init__(self, size: int, ttl_s: float):
        self.size = size
        self.ttl_s = ttl_s
        self.live = False  # True only while the invalidation subscription is live
        self.seq = 0
        self._data: OrderedDict[str, dict[str, tuple[np.ndarray, list[str], float]]] = OrderedDict()

    def get(self, version: str, user: str) -> tuple[np.ndarray, list[str]] | None:
        if not self.live:
            return None
        entry = self._data.get(user, {}).get(version)
        if entry is None:
            return None
        if entry[2] < time.monotonic():
            self._data[user].pop(version, None)
            return None
        self._data.move_to_end(user)
        return entry[0], entry[1]

    def put(self, version: str, user: str, vector: np.ndarray, recent: list[str], read_seq: int) -> None:
        """Keep a value read (or written) when `seq` was `read_seq`, unless an invalidation came since."""
        if not self.live or self.ttl_s <= 0 or read_seq != self.seq:
            return
        self._data.setdefault(user, {})[version] = (vector, recent, time.monotonic() + self.ttl_s)
        self._data.move_to_end(user)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, user: str) -> None:
        self.seq += 1
        self._data.pop(user, None)

    def clear(self, live: bool) -> None:
        self.seq += 1
        self._data.clear()
        self.live = live and self.ttl_s > 0


class RedisUserState(UserStateStore):
    """Redis-backed state; `usable()` is false while Redis is down or events still wait in the WAL
    (reading the cache then could return a vector that a not-yet-replayed event invalidates)."""

    def __init__(self, link: RedisLink, history: LocalHistory, ttl_s: int, history_cap: int,
                 backlog: Callable[[], int], near_size: int = 10_000, near_ttl_s: float = 0.0):
        self.link = link
        self.history = history
        self.ttl_s = ttl_s
        self.history_cap = history_cap
        self._backlog = backlog
        self._put = link.client.register_script(_PUT_LUA)
        self.near = _NearCache(near_size, near_ttl_s)

    def usable(self) -> bool:
        return self.link.up and self._backlog() == 0

    async def get(self, version: str, user: str, dim: int) -> UserState:
        if not self.usable():
            return UserState(None, self.history.get(user))
        near = self.near.get(version, user)
        if near is not None:
            return UserState(near[0], near[1])
        link = self.link
        seq = self.near.seq
        try:
            raw = await link.client.hget(link.uvec_key(user), version)
            link.succeeded("get_user")
            if raw is not None:
                hit = decode_state(raw, dim)
                if hit is not None:
                    self.near.put(version, user, hit[0], hit[1], seq)
                    return UserState(hit[0], hit[1])
            async with link.client.pipeline(transaction=False) as pipe:
                pipe.lrange(link.hist_key(user), 0, self.history_cap - 1)
                pipe.get(link.uev_key(user))
                recent, counter = await pipe.execute()
        except REDIS_DOWN as e:
            link.failed("get_user", e)
            return UserState(None, self.history.get(user))
        return UserState(None, [r.decode("utf-8", "replace") for r in recent],
                         counter.decode() if counter is not None else "0", seq)

    async def get_many(self, version: str, users: list[str], dim: int) -> list[UserState]:
        if not self.usable():
            return [UserState(None, self.history.get(u)) for u in users]
        out: list[UserState | None] = [None] * len(users)
        todo = []
        for i, u in enumerate(users):
            near = self.near.get(version, u)
            if near is None:
                todo.append(i)
            else:
                out[i] = UserState(near[0], near[1])
        if todo:
            link, seq = self.link, self.near.seq
            try:
                async with link.client.pipeline(transaction=False) as pipe:
                    for i in todo:
                        pipe.hget(link.uvec_key(users[i]), version)
                    raws = await pipe.execute()
                misses = []
                for i, raw in zip(todo, raws, strict=True):
                    hit = decode_state(raw, dim) if raw is not None else None
                    if hit is None:
                        misses.append(i)
                    else:
                        self.near.put(version, users[i], hit[0], hit[1], seq)
                        out[i] = UserState(hit[0], hit[1])
                if misses:
                    async with link.client.pipeline(transaction=False) as pipe:
                        for i in misses:
                            pipe.lrange(link.hist_key(users[i]), 0, self.history_cap - 1)
                            pipe.get(link.uev_key(users[i]))
                        got = await pipe.execute()
                    for j, i in enumerate(misses):
                        recent, counter = got[2 * j], got[2 * j + 1]
                        out[i] = UserState(None, [r.decode("utf-8", "replace") for r in recent],
                                           counter.decode() if counter is not None else "0", seq)
                link.succeeded("get_user")
            except REDIS_DOWN as e:
                link.failed("get_user", e)
                return [st if st is not None else UserState(None, self.history.get(u)) for st, u in zip(
                    out, users, strict=True)]
        return [st for st in out if st is not None]

    async def put_many(self, version: str, writes: list[tuple[str, np.ndarray, UserState]]) -> None:
        writes = [w for w in writes if w[2].token is not None]
        if not self.usable() or not writes:
            return
        link = self.link
        vectors = [np.ascontiguousarray(v, np.float32) for _, v, _ in writes]
        try:
            stored = await link.run_scripts([
                (self._put, [link.uvec_key(u), link.uev_key(u)], [version, encode_state(v, st.recent), self.ttl_s,
                                                                  st.token])
                for (u, _, st), v in zip(writes, vectors, strict=True)])
        except REDIS_DOWN as e:
            link.failed("put_vector", e)
            return
        link.succeeded("put_vector")
        for (u, _, st), v, ok in zip(writes, vectors, stored, strict=True):
            if ok:
                self.near.put(version, u, v, st.recent, st.seq)

    async def put_vector(self, version: str, user: str, vector: np.ndarray, state: UserState) -> None:
        if not self.usable() or state.token is None:
            return
        link = self.link
        vector = np.ascontiguousarray(vector, np.float32)
        try:
            stored = await self._put(keys=[link.uvec_key(user), link.uev_key(user)],
                                     args=[version, encode_state(vector, state.recent), self.ttl_s, state.token])
        except REDIS_DOWN as e:
            link.failed("put_vector", e)
            return
        link.succeeded("put_vector")
        if stored:
            self.near.put(version, user, vector, state.recent, state.seq)

    def forget_local(self, user: str) -> None:
        """Drop the near-cache entry of `user` (called before and after the event reaches Redis)."""
        self.near.drop(user)

    async def follow_invalidations(self, retry_s: float = 0.5) -> None:
        """Keep the near cache coherent: subscribe to ``uinval`` and drop each user named there (runs until
        cancelled). The near cache is live only while subscribed, and emptied whenever that changes."""
        if self.near.ttl_s <= 0:
            return
        channel = self.link.inval_channel
        while True:
            pubsub = None
            try:
                pubsub = await self.link.pubsub()
                await pubsub.subscribe(channel)
                self.near.clear(live=True)  # messages may have been missed before this point
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self.near.drop(msg["data"].decode("utf-8", "replace"))
                    elif not self.link.up:
                        self.near.clear(live=False)
            except asyncio.CancelledError:
                self.near.clear(live=False)
                raise
            except REDIS_DOWN as e:
                self.near.clear(live=False)
                log.debug("near_cache_unsubscribed", error=f"{type(e).__name__}: {e}")
            finally:
                if pubsub is not None:
                    with contextlib.suppress(REDIS_DOWN):
                        await pubsub.aclose()
            await asyncio.sleep(retry_s)
