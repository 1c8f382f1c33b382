"""Interaction events: durable append to a Redis stream, or to a local write-ahead file.

An accepted event (HTTP 202) is never lost and never duplicated:

* Redis up, no backlog: one Lua script per event (sent together with the other events in flight: see
  `GroupCommit`), atomically, (1) claims the event id in a dedupe key
  (SET NX EX) and stops if it was already claimed, (2) XADDs the event to the stream the
  nightly retraining reads, (3) LPUSH/LTRIMs the user's recent-event list, (4) deletes the
  user's cached state of EVERY model version (one hash, see cache.py) and bumps the user's event
  counter, so that a vector computed before the event is not cached after it. The 202 is sent
  after Redis acknowledged.
* Redis down (or events still waiting in the WAL, to keep the stream in order): the event is
  appended as one JSON line to the WAL file and fsync'ed before the 202.
* A background task probes Redis and, once it is back, replays the WAL through the same
  script (the dedupe key makes a replay after a crash mid-replay harmless), then truncates it.
  An flock on the file serialises appends and replay across worker processes (service/wal.py, shared
  with the admin item changes of items.py).

Without REDIS_URL the same file is simply the event log of the embedded service.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.cache import LocalHistory
from service.metrics import Metrics
from service.redis_link import REDIS_DOWN, RedisLink
from service.settings import Settings
from service.wal import WalFile

log = structlog.get_logger("mrdib.service.events")

EVENT_TYPE_RE = r"^[a-z][a-z0-9_]{0,31}$"

# KEYS: dedupe, stream, history, uvec hash, event counter.
# ARGV: dedupe_ttl, maxlen ("" = none), cap, history_ttl, item, invalidation channel, user, k1, v1, ...
_RECORD_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
if ARGV[2] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
else
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""


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

    def __init__(self, run: Callable[[list[Event]], Awaitable[list[bool]]], max_batch: int):
        self.run = run
        self.max_batch = max_batch
        self.pending: list[tuple[Event, asyncio.Future[bool]]] = []
        self.task: asyncio.Task | None = None

    async def submit(self, event: Event) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
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
            for (_, fut), fresh in zip(batch, results, strict=True):
                if not fut.done():  # a waiter whose request was cancelled no longer listens
                    fut.set_result(fresh)


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
        self.backlog = self.wal.count() if link else 0
        metrics.event_backlog.set(self.backlog)

    async def record(self, event: Event) -> str:
        """Make `event` durable; returns the sink ("redis", "wal" or "file"). Raises OSError only when
        even the local file cannot be written (then the caller must not answer 202)."""
        self.history.push(event.user_id, event.item_id)
        self.forget_local(event.user_id)
        if self.link is None:
            await asyncio.to_thread(self.wal.append, event.model_dump_json())
            self.metrics.events.labels(sink="file").inc()
            return "file"
        if self.link.up and self.backlog == 0:
            try:
                await self._group.submit(event)
                self.forget_local(event.user_id)  # a read that raced the write must not stay cached here
                self.metrics.events.labels(sink="redis").inc()
                return "redis"
            except REDIS_DOWN as e:
                self.link.mark_down("record_event", e)
        async with self._lock:
            # Re-check under the lock: a replay may have drained the backlog while we waited. Without this,
            # events queued behind a replay refill the WAL, so under steady load the service never returned
            # to the Redis path (events capped at one fsync each) after an outage. Backlog 0 under the lock =
            # every earlier event is in the stream, so order is kept.
            if self.link.up and self.backlog == 0:
                try:
                    await self._apply(event)
                    self.forget_local(event.user_id)
                    self.metrics.events.labels(sink="redis").inc()
                    return "redis"
                except REDIS_DOWN as e:
                    self.link.mark_down("record_event", e)
            await asyncio.to_thread(self.wal.append, event.model_dump_json())
            self.backlog += 1
            self.metrics.event_backlog.set(self.backlog)
        self.metrics.events.labels(sink="wal").inc()
        return "wal"

    def _script_args(self, event: Event) -> tuple[list, list]:
        assert self.link is not None
        s, link = self.settings, self.link
        keys = [link.dedupe_key(event.event_id), link.stream, link.hist_key(event.user_id),
                link.uvec_key(event.user_id), link.uev_key(event.user_id)]
        args = [s.dedupe_ttl_s, s.stream_maxlen or "", s.history_cap, s.history_ttl_s, event.item_id,
                link.inval_channel, event.user_id, *event.fields()]
        return keys, args

    async def _apply(self, event: Event) -> bool:
        """Run the record script; False when the event id had been recorded before (duplicate)."""
        assert self._script is not None
        keys, args = self._script_args(event)
        return bool(await self._script(keys=keys, args=args))

    async def _apply_many(self, events: list[Event]) -> list[bool]:
        """`_apply` for a batch, in order, in one pipelined round trip (no MULTI: each script is atomic)."""
        assert self.link is not None and self._script is not None
        self.metrics.event_batch.observe(len(events))
        if len(events) == 1:
            return [await self._apply(events[0])]
        async with self.link.client.pipeline(transaction=False) as pipe:
            for event in events:
                keys, args = self._script_args(event)
                await self._script(keys=keys, args=args, client=pipe)
            return [bool(r) for r in await pipe.execute()]

    async def replay(self) -> int:
        """Push the WAL to Redis; truncate it only after every line went through. Returns lines replayed."""
        if self.link is None:
            return 0
        async with self._lock:
            wal = await asyncio.to_thread(self.wal.locked)
            try:
                lines = await asyncio.to_thread(wal.lines)
                done = 0
                for n, line in enumerate(lines, 1):
                    try:
                        event = Event.model_validate_json(line)
                    except ValidationError as e:
                        # Only a torn last write (never acknowledged) can look like this; keep a copy.
                        log.error("wal_bad_line", file=str(self.wal.path), line=n, error=str(e)[:200])
                        self.metrics.replayed.labels(result="bad_line").inc()
                        await asyncio.to_thread(WalFile(self.wal.path.with_suffix(".rejected")).append, line)
                        continue
                    fresh = await self._apply(event)  # raises REDIS_DOWN -> keep the whole file
                    self.metrics.replayed.labels(result="applied" if fresh else "duplicate").inc()
                    done += 1
                await asyncio.to_thread(wal.clear)
                self.backlog = 0
                self.metrics.event_backlog.set(0)
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
                self.link.mark_down("replay", e)
            except Exception:  # the monitor must survive anything; the error is logged
                log.exception("event_monitor_failed")
            await asyncio.sleep(self.settings.redis_check_interval_s)
