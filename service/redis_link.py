"""The Redis connection of the service and its state: up, down, or answering errors (a small circuit breaker).

Two modes (`MRDIB_REDIS_MODE`), one key layout (mrdib/redis_keys.py, hash-tagged so that every script touches one
slot) and one interface for the rest of the service:

* ``single``: redis-py asyncio over a bounded *blocking* pool with short timeouts: under load a request waits
  briefly for a connection instead of opening unbounded sockets.
* ``cluster``: redis-py's asyncio `RedisCluster` (`REDIS_URL` names any node; the slot map is discovered and
  followed through MOVED/ASK), at most `MRDIB_REDIS_POOL_SIZE` connections per node.

A dead Redis costs at most one timeout before the link is marked down. While down, callers skip Redis entirely
(no timeout per request) and serve locally; a background probe (`events.EventSink.monitor`) marks it up again
(cluster: every primary answers and reports ``cluster_state:ok``). No Redis failure ever propagates as an
exception from this module's helpers.

Three kinds of failure, told apart by `failed`:

* unavailable (lost connection, timeout, CLUSTERDOWN, a slot without a node): the link goes *down*,
  `/readyz` says ``degraded``;
* *refused*: Redis is reachable but answers an error to our command (CROSSSLOT, NOSCRIPT, WRONGTYPE, OOM,
  READONLY, a MOVED the client cannot follow, ...). The caller serves locally as for an outage, and events go to
  the local WAL, but that is no outage a probe would see repaired: it is a misconfiguration (e.g. a single-mode
  client pointed at a cluster) or a full Redis. It is logged (error level, once per op and error code every
  `REFUSED_LOG_EVERY_S`), counted in ``mrdib_redis_refused_total{op, code}`` and shown by `/readyz` as
  ``redis: "error"`` with the message, until the same operation succeeds again (or, for an operation that is not
  retried, `REFUSAL_SHOWN_S` after it last failed);
* a full pool (`PoolExhausted`; cluster: `MaxConnectionsError`) is not a dead Redis: when a burst of requests is
  larger than the pool, the ones that find no free connection get it. It is a Redis error like the others for the
  caller (which serves that request locally), but the link stays up: otherwise one burst would switch every later
  request to degraded mode until the next probe.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mrdib.redis_keys import KeyLayout
from service.metrics import Metrics
from service.settings import Settings

log = structlog.get_logger("mrdib.service.redis")

# Exceptions that mean "Redis did not do it", not a bug of ours (the cluster client raises some outside RedisError).
REDIS_DOWN = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError, ConnectionError)
REFUSED_LOG_EVERY_S = 10.0
REFUSAL_SHOWN_S = 300.0
_CODE_RE = re.compile(r"[A-Z][A-Z_]{1,30}\b")


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


def is_refusal(exc: BaseException) -> bool:
    """Redis (or the cluster client, before sending) refused the command; False for unavailability."""
    if isinstance(exc, ClusterDownError | TryAgainError | RedisConnectionError | RedisTimeoutError):
        return False  # CLUSTERDOWN / MASTERDOWN, TRYAGAIN during a slot migration, lost connections, timeouts
    if isinstance(exc, SlotNotCoveredError | RedisClusterUnreachableError):
        return False
    if isinstance(exc, RedisClusterException):
        # The client's own checks ("all keys must map to the same key slot"), except a cluster it cannot reach.
        return "cannot be connected" not in str(exc)
    return isinstance(exc, ResponseError)


def error_code(exc: BaseException) -> str:
    """A bounded label for a failure: Redis's error code (CROSSSLOT, MOVED, NOSCRIPT, OOM, ...: redis-py keeps it
    as `status_code` and strips it from the message) or, for the client's own errors, the class name."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and _CODE_RE.fullmatch(code):
        return code
    m = _CODE_RE.match(str(exc))
    if m and isinstance(exc, ResponseError):
        return m.group(0)
    return type(exc).__name__[:40]


class RedisLink:
    """One client (+ pool), the key layout, and whether Redis is believed reachable and willing."""

    def __init__(self, settings: Settings, metrics: Metrics):
        assert settings.redis_url, "RedisLink needs REDIS_URL"
        self.settings = settings
        self.metrics = metrics
        self.layout: KeyLayout = settings.layout
        self.cluster = settings.redis_mode == "cluster"
        timeouts = dict(socket_timeout=settings.redis_socket_timeout_s,
                        socket_connect_timeout=settings.redis_connect_timeout_s)
        self.pool: BoundedPool | None = None
        if self.cluster:
            # Topology errors are retried inside the client a few times (MOVED/ASK after a resharding or failover),
            # with a bounded backoff: a dead node must cost a request well under a client's timeout, after which
            # the event goes to the WAL and the request is served locally (see Settings.redis_cluster_retries).
            retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=settings.redis_cluster_backoff_cap_s),
                          retries=settings.redis_cluster_retries)
            self.client: Any = RedisCluster.from_url(settings.redis_url, max_connections=settings.redis_pool_size,
                                                     retry=retry, **timeouts)
        else:
            self.pool = BoundedPool.from_url(settings.redis_url, max_connections=settings.redis_pool_size,
                                             timeout=settings.redis_pool_timeout_s, **timeouts)
            self.client = aioredis.Redis(connection_pool=self.pool)
        self.up = False
        self.refused: dict[str, tuple[str, float]] = {}  # op -> (message, when): refusals not yet cleared
        self.last_error: str | None = None  # the latest failure of any kind, for /readyz while not ok
        self._logged: dict[tuple[str, str], float] = {}
        metrics.redis_up.set(0)

    # --- keys (mrdib/redis_keys.py) --------------------------------------------------------------

    def user_key(self, kind: str, user: str) -> str:
        """The name of every key that holds one user's data (the methods below): `<prefix>{u<shard>}:<kind>:<user>`,
        in the slot of the user's event shard, so that the event script (and every per-user script) touches one
        Redis Cluster slot. The user id is the last part, so that two users' names can never be the same key."""
        return self.layout.user_key(kind, user)

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

    def stream_of(self, user: str) -> str:
        """The event stream of the user's shard (same hash tag as the user's keys)."""
        return self.layout.user_stream(user)

    @property
    def inval_channel(self) -> str:
        return self.layout.inval_channel

    def items_keys(self) -> tuple[str, str, str]:
        """Admin item changes shared by every worker: (side items hash, deleted ids set, change counter)."""
        return self.layout.item_keys()

    # --- state -----------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """For /readyz: ok, degraded (unreachable) or error (reachable, refusing some operation)."""
        if not self.up:
            return "degraded"
        if self.refused:  # a refusal not seen again for REFUSAL_SHOWN_S is over (an op that never runs again)
            now = time.monotonic()
            for op in [op for op, (_, when) in self.refused.items() if now - when > REFUSAL_SHOWN_S]:
                del self.refused[op]
        return "error" if self.refused else "ok"

    def error_message(self) -> str | None:
        """What /readyz shows while not ok: the latest refusal still standing, else the latest failure."""
        if self.refused:
            return max(self.refused.values(), key=lambda v: v[1])[0]
        return self.last_error

    def failed(self, op: str, exc: BaseException) -> None:
        """Record a failed Redis operation `op` (see the module docstring for the three kinds)."""
        if isinstance(exc, PoolExhausted | MaxConnectionsError):
            self.metrics.redis_pool_exhausted.labels(op=op).inc()
            log.debug("redis_pool_exhausted", op=op, error=str(exc))
            return
        code = error_code(exc)
        text = str(exc)[:300]
        message = f"{op}: {code} {text}" if code != type(exc).__name__ else f"{op}: {code}: {text}"
        self.last_error = message
        self.metrics.redis_errors.labels(op=op).inc()
        if is_refusal(exc):
            self.metrics.redis_refused.labels(op=op, code=code).inc()
            self.refused[op] = (message, time.monotonic())
            now = time.monotonic()
            if now - self._logged.get((op, code), -1e9) >= REFUSED_LOG_EVERY_S:
                self._logged[(op, code)] = now
                log.error("redis_refused", op=op, code=code, error=message,
                          hint="Redis answers errors to this operation (served locally / events kept in the WAL "
                               "meanwhile); check MRDIB_REDIS_MODE against the server, and Redis's memory")
            return
        if self.up:
            log.warning("redis_down", op=op, error=message)
        self.up = False
        self.metrics.redis_up.set(0)

    def succeeded(self, *ops: str) -> None:
        """`ops` worked again: their refusal (if any) is over."""
        if not self.refused:
            return
        for op in ops:
            if self.refused.pop(op, None) is not None:
                log.info("redis_accepts_again", op=op)

    def mark_up(self) -> None:
        if not self.up:
            log.info("redis_up")
        self.up = True
        self.metrics.redis_up.set(1)

    async def probe(self) -> bool:
        """PING (cluster: CLUSTER INFO on every primary, which must say cluster_state:ok) once; updates the
        state. Never raises."""
        try:
            if self.cluster:
                infos = await self.client.cluster_info(target_nodes=RedisCluster.PRIMARIES)
                bad = {n: i.get("cluster_state") for n, i in _per_node(infos).items() if i.get("cluster_state") != "ok"}
                if bad:
                    raise ClusterDownError(f"cluster_state is not ok on {sorted(bad)}")
            else:
                await self.client.ping()
        except REDIS_DOWN as e:
            self.failed("ping", e)
            return False
        self.mark_up()
        return True

    async def run_scripts(self, calls: Sequence[tuple[Any, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Run Lua scripts (`(registered script, keys, args)`, in order) in one pipelined round trip, no MULTI
        (each script is atomic); their results, or the first error raised.

        Single Redis: redis-py's pipeline loads missing scripts itself. A cluster pipeline does not: a node that has
        not seen a script yet (a fresh node, one restarted, a failed-over replica) answers NOSCRIPT. Those calls did
        not run, so they are sent again, in their order, after the scripts are loaded on every primary."""
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            results = await pipe.execute(raise_on_error=not self.cluster)
        if self.cluster:
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in {id(c[0]): c[0] for c in calls}.values():
                    script.sha = await self.client.script_load(script.script)  # every primary
                async with self.client.pipeline(transaction=False) as pipe:
                    for i in missing:
                        script, keys, args = calls[i]
                        await script(keys=keys, args=args, client=pipe)
                    for i, r in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                        results[i] = r
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return list(results)

    async def pubsub(self) -> Any:
        """A pub/sub connection. Cluster: to one node, picked anew at each (re)connect (PUBLISH reaches every
        node of a cluster, so any node hears every shard's invalidations)."""
        if self.cluster:
            await self.client.initialize()
            return self.client.pubsub(node=self.client.get_random_node(), ignore_subscribe_messages=True)
        return self.client.pubsub(ignore_subscribe_messages=True)

    async def close(self) -> None:
        try:
            await self.client.aclose()
            if self.pool is not None:
                await self.pool.disconnect()
        except REDIS_DOWN:
            pass


def _per_node(reply: Any) -> dict[str, dict]:
    """A multi-node reply as {node: reply}; one node's reply (a dict of fields) as {"": reply}."""
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        return reply
    return {"": reply if isinstance(reply, dict) else {}}
