"""Interaction events: durable append to a Redis stream, or to a local write-ahead file.

An accepted event (HTTP 202) is never lost and never duplicated:

* Redis up, no backlog: one Lua script per event (sent together with the other events in flight: see
  `GroupCommit`), atomically, (1) looks the event id up among the ids THIS user sent (a sorted set per
  user, entries older than `MRDIB_DEDUPE_TTL_S` dropped) and stops if it is there -- the answer then
  says `duplicate: true`; de-duplication is per (user, event id), so no user can claim another user's
  ids -- (2) takes a token from the user's rate-limit bucket (service/ratelimit.py) and stops, refused,
  when it is empty, (3) records the id and XADDs the event to the user's shard stream, which the nightly
  retraining reads,
  (4) LPUSH/LTRIMs the user's recent-event list, (5) deletes the user's cached state of EVERY model
  version (one hash, see cache.py) and bumps the user's event counter, so that a vector computed before
  the event is not cached after it. The 202 is sent after Redis acknowledged. Every key of the script
  carries the user's shard hash tag (mrdib/redis_keys.py), so it runs on one node of a Redis Cluster as on
  a single Redis, and a user's events stay in order in one stream.
* Redis down (or events still waiting in the WAL, to keep the stream in order): the event is
  rate-limited by this process's buckets, appended as one JSON line to the WAL file and fsync'ed before
  the 202 (`duplicate` is then unknown: null).
* A background task probes Redis and, once it is back, replays the WAL through the same
  script without the rate limit (the events were accepted already; the per-user id check makes a replay
  after a crash mid-replay harmless), `MRDIB_EVENT_BATCH_MAX` events per pipelined round trip, then
  truncates it. A Redis that answers errors (e.g. CROSSSLOT from a cluster the service was not configured
  for) sends the events to the WAL in the same way; `/readyz` then says ``redis: "error"``
  (service/redis_link.py).
  An flock on the file serialises appends and replay across worker processes (service/wal.py, shared
  with the admin item changes of items.py).

Without REDIS_URL the same file is simply the event log of the embedded service.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.cache import LocalHistory
from service.metrics import Metrics
from service.ratelimit import BUCKET_LUA, LocalBuckets
from service.redis_link import REDIS_DOWN, RedisLink
from service.settings import Settings
from service.wal import WalFile

log = structlog.get_logger("mrdib.service.events")

EVENT_TYPE_RE = r"^[a-z][a-z0-9_]{0,31}$"

# KEYS: the user's event ids (zset), the user's rate bucket, stream, history, uvec hash, event counter.
# ARGV: event id, dedupe ttl (ms), rate/s ("0" = no limit), burst, maxlen ("" = none), cap, history ttl, item,
#       invalidation channel, user, k1, v1, ...
# Returns 1 recorded, 0 duplicate (nothing written), -n refused by the rate limit (next token in n ms).
_RECORD_LUA = BUCKET_LUA + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1]) == 0 then return 0 end
local wait = take_token(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), now)
if wait > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])  -- refused: the id is not taken (one call less on the common path)
  return -wait
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
else
  redis.call('XADD', KEYS[3], '*', unpack(fields))
end
redis.call('LPUSH', KEYS[4], ARGV[8])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[4], ARGV[7])
redis.call('DEL', KEYS[5])
redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[10])
return 1
"""
RECORDED, DUPLICATE = 1, 0


class RateLimited(Exception):
    """The user's event bucket is empty: nothing was recorded; retry after `retry_after_s` seconds."""

    def __init__(self, user_id: str, retry_after_s: float):
        super().__init__(f"too many events for user {user_id!r}; retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Recorded:
    """Where an accepted event was made durable, and whether it was a retry of one recorded before (None:
    not known yet, the WAL replay checks it)."""

    sink: str
    duplicate: bool | None


class Event(BaseModel):
    """One accepted interaction, as stored in the stream and the WAL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=64)
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    type: str = Field(pattern=EVENT_TYPE_RE)
    ts: datetime

    @staticmethod
    def new(user_id: str, item_id: str, type: str, ts: datetime | None, event_id: str | None) -> Event:
        ts = ts or datetime.now(UTC)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return Event(event_id=event_id or uuid.uuid4().hex, user_id=user_id, item_id=item_id, type=type, ts=ts)

    def fields(self) -> list[str]:
        return ["event_id", self.event_id, "user_id", self.user_id, "item_id", self.item_id,
                "type", self.type, "ts", self.ts.isoformat()]


class GroupCommit:
    """Group commit: concurrent events go to Redis together, in one pipelined round trip.

    An event waits for its batch only while an earlier batch is in flight: at low load every batch holds
    one event and nothing is added to its latency; under load the events that arrived during one round trip
    form the next batch, so the Python cost per event (pool checkout, one socket write and one wake-up per
    command) is paid once per batch. Each event keeps its own script call, so the guarantees of the module
    docstring are per event as before; a pipeline cut by a Redis failure fails every caller of that batch,
    each of which then goes to the WAL -- events of that batch that did reach Redis are dropped as duplicates
    at replay by their dedupe key, exactly like a single call whose reply was lost.
    """

    def __init__(self, run: Callable[[list[Event]], Awaitable[list[int]]], max_batch: int):
        self.run = run
        self.max_batch = max_batch
        self.pending: list[tuple[Event, asyncio.Future[int]]] = []
        self.task: asyncio.Task | None = None

    async def submit(self, event: Event) -> int:
        """The script's answer for `event` (RECORDED, DUPLICATE, or -ms when rate-limited)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append((event, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain(), name="event-group-commit")
        return await fut

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            try:
                results = await self.run([e for e, _ in batch])
            except BaseException as e:  # handed to every waiter, who decides
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            for (_, fut), code in zip(batch, results, strict=True):
                if not fut.done():  # a waiter whose request was cancelled no longer listens
                    fut.set_result(code)


class EventSink:
    """Where accepted events go; see the module docstring for the guarantees."""

    def __init__(self, settings: Settings, metrics: Metrics, link: RedisLink | None, history: LocalHistory,
                 forget_local: Callable[[str], None]):
        self.settings = settings
        self.metrics = metrics
        self.link = link
        self.history = history
        self.forget_local = forget_local
        self.wal = WalFile(settings.wal_path)
        self._lock = asyncio.Lock()  # in-process: appends vs replay
        self._script = link.client.register_script(_RECORD_LUA) if link else None
        self._group = GroupCommit(self._apply_many, settings.event_batch_max)
        self.buckets = LocalBuckets(settings.event_rate_per_s, settings.event_burst, settings.lru_size)
        self.backlog = self.wal.count() if link else 0
        metrics.event_backlog.set(self.backlog)

    async def record(self, event: Event) -> Recorded:
        """Make `event` durable. Raises RateLimited (nothing recorded) when the user's bucket is empty, and
        OSError only when even the local file cannot be written (then the caller must not answer 202)."""
        self.forget_local(event.user_id)
        if self.link is None:
            self._take_local_token(event)
            await asyncio.to_thread(self.wal.append, event.model_dump_json())
            self._accepted(event, "file")
            return Recorded("file", None)
        if self.link.up and self.backlog == 0:
            try:
                answer = self._answered(event, await self._group.submit(event))
                self.link.succeeded("record_event")
                return answer
            except REDIS_DOWN as e:
                self.link.failed("record_event", e)
        async with self._lock:
            # Re-check under the lock: a replay may have drained the backlog while we waited. Without this,
            # events queued behind a replay refill the WAL, so under steady load the service never returned
            # to the Redis path (events capped at one fsync each) after an outage. Backlog 0 under the lock =
            # every earlier event is in the stream, so order is kept.
            if self.link.up and self.backlog == 0:
                try:
                    return self._answered(event, await self._apply(event))
                except REDIS_DOWN as e:
                    self.link.failed("record_event", e)
            self._take_local_token(event)
            await asyncio.to_thread(self.wal.append, event.model_dump_json())
            self.backlog += 1
            self.metrics.event_backlog.set(self.backlog)
        self._accepted(event, "wal")
        return Recorded("wal", None)

    def _accepted(self, event: Event, sink: str) -> None:
        self.history.push(event.user_id, event.item_id)
        self.metrics.events.labels(sink=sink).inc()

    def _answered(self, event: Event, code: int) -> Recorded:
        """The outcome of the record script for `event` (see _RECORD_LUA)."""
        if code < 0:
            self.metrics.events_refused.labels(reason="rate_limited").inc()
            raise RateLimited(event.user_id, -code / 1000)
        self.forget_local(event.user_id)  # a read that raced the write must not stay cached here
        if code == DUPLICATE:
            self.metrics.event_duplicates.inc()
            return Recorded("redis", True)
        self._accepted(event, "redis")
        return Recorded("redis", False)

    def _take_local_token(self, event: Event) -> None:
        """The rate limit while Redis is not in the path (this process's buckets)."""
        wait = self.buckets.take(event.user_id)
        if wait:
            self.metrics.events_refused.labels(reason="rate_limited").inc()
            raise RateLimited(event.user_id, wait)

    def _script_args(self, event: Event, limit: bool) -> tuple[list, list]:
        assert self.link is not None
        s, link, user = self.settings, self.link, event.user_id
        keys = [link.dedupe_key(user), link.rate_key(user), link.stream_of(user), link.hist_key(user),
                link.uvec_key(user), link.uev_key(user)]
        args = [event.event_id, s.dedupe_ttl_s * 1000, s.event_rate_per_s if limit else 0, s.event_burst,
                s.stream_maxlen or "", s.history_cap, s.history_ttl_s, event.item_id, link.inval_channel, user,
                *event.fields()]
        return keys, args

    async def _apply(self, event: Event, limit: bool = True) -> int:
        """Run the record script: RECORDED, DUPLICATE, or -ms until the next token (rate-limited, only with
        `limit`: a WAL replay records events that were accepted already)."""
        assert self._script is not None
        keys, args = self._script_args(event, limit)
        return int(await self._script(keys=keys, args=args))

    async def _apply_many(self, events: list[Event], limit: bool = True) -> list[int]:
        """`_apply` for a batch, in order, in one pipelined round trip (no MULTI: each script is atomic)."""
        assert self.link is not None and self._script is not None
        self.metrics.event_batch.observe(len(events))
        if len(events) == 1:
            return [await self._apply(events[0], limit)]
        script = self._script
        return [int(r) for r in await self.link.run_scripts([(script, *self._script_args(e, limit)) for e in events])]

    async def replay(self) -> int:
        """Push the WAL to Redis; truncate it only after every line went through. Returns lines replayed."""
        if self.link is None:
            return 0
        async with self._lock:
            wal = await asyncio.to_thread(self.wal.locked)
            try:
                lines = await asyncio.to_thread(wal.lines)
                events: list[Event] = []
                for n, line in enumerate(lines, 1):
                    try:
                        events.append(Event.model_validate_json(line))
                    except ValidationError as e:
                        # Only a torn last write (never acknowledged) can look like this; keep a copy.
                        log.error("wal_bad_line", file=str(self.wal.path), line=n, error=str(e)[:200])
                        self.metrics.replayed.labels(result="bad_line").inc()
                        await asyncio.to_thread(WalFile(self.wal.path.with_suffix(".rejected")).append, line)
                # In file order, `event_batch_max` scripts per pipelined round trip (one event per round trip made a
                # replay of thousands of events take seconds, during which new events queued behind the lock).
                done, step = 0, self.settings.event_batch_max
                for s in range(0, len(events), step):
                    # REDIS_DOWN propagates -> the whole file is kept (a later replay is harmless: per-user ids)
                    for code in await self._apply_many(events[s:s + step], limit=False):
                        self.metrics.replayed.labels(result="applied" if code == RECORDED else "duplicate").inc()
                        done += 1
                await asyncio.to_thread(wal.clear)
                self.backlog = 0
                self.metrics.event_backlog.set(0)
                self.link.succeeded("replay", "record_event")
                if lines:
                    log.info("wal_replayed", events=done, file=str(self.wal.path))
                return done
            finally:
                wal.close()

    async def monitor(self) -> None:
        """Probe Redis and replay the WAL whenever it is reachable and has a backlog (runs forever)."""
        if self.link is None:
            return
        while True:
            try:
                if await self.link.probe():
                    self.backlog = max(self.backlog, await asyncio.to_thread(self.wal.count))
                    if self.backlog:
                        await self.replay()
            except REDIS_DOWN as e:
                self.link.failed("replay", e)
            except RuntimeError as e:
                if "after shutdown" in str(e):  # the loop's thread pool is gone: the process is stopping
                    return
                log.exception("event_monitor_failed")
            except Exception:  # the monitor must survive anything; the error is logged
                log.exception("event_monitor_failed")
            await asyncio.sleep(self.settings.redis_check_interval_s)
