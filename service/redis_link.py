"""The Redis connection of the service and its up/down state (a small circuit breaker).

redis-py asyncio over a bounded *blocking* pool with short timeouts: under load a request waits
briefly for a connection instead of opening unbounded sockets, and a dead Redis costs at most
one timeout before the link is marked down. While down, callers skip Redis entirely (no timeout
per request) and serve locally; a background probe (`events.EventSink.monitor`) marks it up
again. No Redis failure ever propagates as an exception from this module's helpers.

A full pool is not a dead Redis: when a burst of requests is larger than the pool, the ones that find no
free connection within `MRDIB_REDIS_POOL_TIMEOUT_S` get `PoolExhausted`. It is a Redis error like the
others for the caller (which serves that request locally), but `mark_down` does not mark the link down
for it: otherwise one burst would switch every later request to degraded mode until the next probe.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mrdib.side_items import side_item_keys
from service.metrics import Metrics
from service.settings import Settings

log = structlog.get_logger("mrdib.service.redis")

# Exceptions that mean "Redis is unavailable", not a bug of ours.
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)


class PoolExhausted(RedisConnectionError):
    """No pooled connection became free within the pool timeout: the service is busy, Redis is not down."""


class BoundedPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, raising `PoolExhausted` (not a plain ConnectionError) when the wait times out.

    redis-py reports that timeout as ``ConnectionError("No connection available.")`` raised from the
    asyncio timeout of the wait, the same class as a refused connection; the cause tells them apart (a
    failed connect is a redis-py error or an OSError, never a bare asyncio timeout)."""

    async def get_connection(self, *args: object, **kwargs: object) -> AbstractConnection:
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as e:
            if isinstance(e.__cause__, asyncio.TimeoutError) and not isinstance(e.__cause__, RedisError):
                raise PoolExhausted(f"no free Redis connection within {self.timeout} s "
                                    f"({self.max_connections} pooled)") from e
            raise


class RedisLink:
    """One client + pool, key naming, and whether Redis is currently believed reachable."""

    def __init__(self, settings: Settings, metrics: Metrics):
        assert settings.redis_url, "RedisLink needs REDIS_URL"
        self.settings = settings
        self.metrics = metrics
        self.pool = BoundedPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            timeout=settings.redis_pool_timeout_s,
            socket_timeout=settings.redis_socket_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
        )
        self.client = aioredis.Redis(connection_pool=self.pool)
        self.up = False
        metrics.redis_up.set(0)

    def key(self, *parts: str) -> str:
        return self.settings.redis_key_prefix + ":".join(parts)

    def user_key(self, kind: str, user: str) -> str:
        """The name of every key that holds one user's data (the methods below): one place, so that placing all
        of a user's keys in one Redis Cluster slot (a hash tag around the user) is one edit. The user id is the
        last part, so that two users' names can never be the same key."""
        return self.key(kind, user)

    def uvec_key(self, user: str) -> str:
        """Hash of a user's cached state, one field per model version: an event deletes the whole key, so no
        version (old or new, during a roll-out) can serve a vector the event made stale."""
        return self.user_key("uvec", user)

    def uev_key(self, user: str) -> str:
        """Counter of a user's accepted events: a vector computed from state read before an event is not cached
        after it (the cache write compares this counter)."""
        return self.user_key("uev", user)

    def hist_key(self, user: str) -> str:
        return self.user_key("hist", user)

    def dedupe_key(self, user: str) -> str:
        """Sorted set of the event ids this user sent (score: when, ms): de-duplication is per (user, event id),
        so that one user's id can never make another user's event a "duplicate"."""
        return self.user_key("evt", user)

    def rate_key(self, user: str) -> str:
        """Hash {tokens, ts} of the user's event rate limit (token bucket, see service/ratelimit.py)."""
        return self.user_key("rate", user)

    @property
    def inval_channel(self) -> str:
        """Pub/sub channel on which the event script names users whose cached state just became stale."""
        return self.key("uinval")

    def items_keys(self) -> tuple[str, str, str]:
        """Admin item changes shared by every worker: (side items hash, deleted ids set, change counter)."""
        return side_item_keys(self.settings.redis_key_prefix)

    @property
    def stream(self) -> str:
        return self.settings.stream

    def mark_down(self, op: str, exc: BaseException) -> None:
        """Record a failed Redis operation; the link goes down unless the pool was merely full."""
        if isinstance(exc, PoolExhausted):
            self.metrics.redis_pool_exhausted.labels(op=op).inc()
            log.debug("redis_pool_exhausted", op=op, error=str(exc))
            return
        self.metrics.redis_errors.labels(op=op).inc()
        if self.up:
            log.warning("redis_down", op=op, error=f"{type(exc).__name__}: {exc}")
        self.up = False
        self.metrics.redis_up.set(0)

    def mark_up(self) -> None:
        if not self.up:
            log.info("redis_up")
        self.up = True
        self.metrics.redis_up.set(1)

    async def probe(self) -> bool:
        """PING once; updates the state. Never raises."""
        try:
            await self.client.ping()
        except REDIS_DOWN as e:
            self.mark_down("ping", e)
            return False
        self.mark_up()
        return True

    async def close(self) -> None:
        try:
            await self.client.aclose()
            await self.pool.disconnect()
        except REDIS_DOWN:
            pass
