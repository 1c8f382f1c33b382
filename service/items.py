"""Admin item changes (PUT/DELETE /items): where they are kept, so that every worker applies them.

With ``--workers N`` each worker is its own process with its own overlay; a change that lived only in
the worker that received it would be visible to 1/N of the requests. So with Redis configured the
change log IS Redis:

* ``{items}:side``    hash   item id -> JSON ``{"features": {modality: [floats]}, "put_at": ISO time, "meta"?: {...}}``
  (the record's format: mrdib/side_items.py, shared with `mrdib retrain`, which merges these items)
* ``{items}:deleted`` set    ids hidden from every result
* ``{items}:ver``     counter incremented by every change (one Lua script per change: atomic)

(under the key prefix; one hash tag, so that each script runs on one node of a Redis Cluster: mrdib/redis_keys.py)

Features, not vectors, are stored: every model version embeds them with its own item tower (and caches
the result per version, see model_store.py). Each worker polls ``{items}:ver`` (one GET every
``MRDIB_ITEM_SYNC_INTERVAL_S``) and, when it differs from what it applied, reads the whole log in one
MULTI (a consistent snapshot) and rebuilds its overlay; the worker that received the change does so at
once.

Redis down: the change is still accepted (the issue: a Redis failure never turns into a 5xx, nothing
acknowledged is lost). It is appended to a local write-ahead file (``MRDIB_ITEM_WAL_PATH``, fsync'ed
before the answer, service/wal.py) and folded into this worker's overlay at once; the answer says
``pending_sync``. Every worker of the host shares that file (it sits beside the event WAL), reads it on
each sync tick and applies it on top of the last Redis snapshot it read, so the host's workers agree
even during the outage. When Redis is back, the first worker to notice replays the file into Redis (in
file order, through the same scripts: the last change of an item wins) and truncates it; every worker
then picks the result up through ``{items}:ver``, including the workers of other hosts. While the file is
not empty, a new change is sent to Redis only after the file has been replayed, under its lock, so that
no later change is overwritten by an older pending one. Replaying the file again (a crash between the
Redis writes and the truncation) ends in the same state: each script sets the whole state of its item, so
re-running the same sequence in order ends where it ended the first time.

Without Redis (embedded demo, one process) the log is a plain in-process one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from mrdib.item_meta import MetaRecord
from mrdib.side_items import SideItem, decode_side, encode_side
from service.redis_link import REDIS_DOWN, RedisLink
from service.wal import WalFile

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
# KEYS: side, deleted, ver (tagged), then the same three before hash tags. Single Redis only (two slots).
# Returns how many keys were moved, or -1 when both layouts hold keys (then nothing is touched).
_MIGRATE_LUA = """
local old, new = 0, 0
for i = 1, 3 do
  new = new + redis.call('EXISTS', KEYS[i])
  old = old + redis.call('EXISTS', KEYS[i + 3])
end
if old == 0 then return 0 end
if new > 0 then return -1 end
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i + 3]) == 1 then redis.call('RENAME', KEYS[i + 3], KEYS[i]) end
end
return old
"""


class ItemLogUnavailable(RuntimeError):
    """Neither Redis nor the local item WAL could record the change (a disk failure while Redis is down)."""


@dataclass(frozen=True)
class ItemChanges:
    """A snapshot of every admin change; `version` orders snapshots of one log.

    `pending` counts the changes of the local item WAL folded in on top of shared version `version` (Redis
    was down when they were made: not yet seen by the workers of other hosts); `pending_token` identifies
    them, so that two snapshots with the same version but different pending changes differ."""

    side: Mapping[str, SideItem] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    version: int = 0
    pending: int = 0
    pending_token: str = ""

    def same_as(self, other: ItemChanges) -> bool:
        """Whether both snapshots hold the same changes (the cheap test of the sync loop)."""
        return self.version == other.version and self.pending_token == other.pending_token


class ItemChangeLog:
    """Interface: record a change (returns the resulting snapshot) and tell whether there is a newer one."""

    async def put(self, item_id: str, features: Mapping[str, np.ndarray], meta: MetaRecord | None = None
                  ) -> ItemChanges:
        raise NotImplementedError

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        """Hide `item_id`; also says whether it was a side item."""
        raise NotImplementedError

    async def newer_than(self, seen: ItemChanges) -> ItemChanges | None:
        """The current snapshot if it differs from `seen`, else None (the cheap, frequent case)."""
        raise NotImplementedError


class LocalItemLog(ItemChangeLog):
    """One process, no Redis: the log is this object."""

    def __init__(self) -> None:
        self._state = ItemChanges()

    async def put(self, item_id: str, features: Mapping[str, np.ndarray], meta: MetaRecord | None = None
                  ) -> ItemChanges:
        s = self._state
        side = {**s.side, item_id: SideItem(dict(features), datetime.now(UTC), meta)}
        self._state = ItemChanges(side, s.deleted - {item_id}, s.version + 1)
        return self._state

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        s = self._state
        had = item_id in s.side
        side = {k: v for k, v in s.side.items() if k != item_id}
        self._state = ItemChanges(side, s.deleted | {item_id}, s.version + 1)
        return self._state, had

    async def newer_than(self, seen: ItemChanges) -> ItemChanges | None:
        return None if self._state.same_as(seen) else self._state



@dataclass(frozen=True)
class PendingChange:
    """One admin change waiting in the local item WAL (Redis was down): a put with its side item, or a delete."""

    op: Literal["put", "delete"]
    item_id: str
    side: str | None = None  # `encode_side` of a put (its put time included: a replay keeps it)
    item: SideItem | None = field(default=None, compare=False)  # `side` decoded

    @staticmethod
    def put(item_id: str, item: SideItem) -> PendingChange:
        return PendingChange("put", item_id, encode_side(item), item)

    def to_line(self) -> str:
        return json.dumps({"op": self.op, "item_id": self.item_id, "side": self.side})

    @staticmethod
    def from_line(line: str) -> PendingChange:
        """Inverse of `to_line`; ValueError naming the problem for anything else (e.g. a torn last write)."""
        try:
            d = json.loads(line)
            op, item_id, side = d["op"], d["item_id"], d.get("side")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable item WAL line: {type(e).__name__}: {e}") from e
        if op not in ("put", "delete") or not isinstance(item_id, str) or not item_id:
            raise ValueError(f"unreadable item WAL line: op {op!r}, item id {item_id!r}")
        if op == "delete":
            return PendingChange("delete", item_id)
        if not isinstance(side, str):
            raise ValueError("unreadable item WAL line: a put without its side item")
        return PendingChange("put", item_id, side, decode_side(side))


def fold(base: ItemChanges, pending: Sequence[PendingChange], token: str) -> ItemChanges:
    """`base` with `pending` applied in order: the state Redis will hold once they are replayed."""
    if not pending:
        return replace(base, pending=0, pending_token="")
    side, deleted = dict(base.side), set(base.deleted)
    for c in pending:
        if c.op == "put":
            assert c.item is not None
            side[c.item_id] = c.item
            deleted.discard(c.item_id)
        else:
            side.pop(c.item_id, None)
            deleted.add(c.item_id)
    return ItemChanges(side, frozenset(deleted), base.version, len(pending), token)


class RedisItemLog(ItemChangeLog):
    """The log in Redis, shared by every worker (and every replica) using the same key prefix; a local
    write-ahead file holds the changes accepted while Redis is down (see the module docstring)."""

    def __init__(self, link: RedisLink, wal_path: Path):
        self.link = link
        self.keys = list(link.items_keys())
        self._put = link.client.register_script(_PUT_LUA)
        self._delete = link.client.register_script(_DELETE_LUA)
        self.wal = WalFile(wal_path)
        self._lock = asyncio.Lock()  # in this worker: a change vs a replay (the flock orders processes)
        self._base = ItemChanges()  # the last snapshot read from Redis
        # The sync loop re-reads the WAL on every tick while it is not empty: parse and fold once per content.
        self._parsed: tuple[str, list[PendingChange], list[str]] = ("", [], [])
        self._folded: tuple[str, ItemChanges, ItemChanges] | None = None  # (token, base, view)

    # --- recording a change ----------------------------------------------------------------------

    async def put(self, item_id: str, features: Mapping[str, np.ndarray], meta: MetaRecord | None = None
                  ) -> ItemChanges:
        changes, _ = await self._record(PendingChange.put(item_id, SideItem(dict(features), datetime.now(UTC), meta)))
        return changes

    async def delete(self, item_id: str) -> tuple[ItemChanges, bool]:
        return await self._record(PendingChange("delete", item_id))

    async def _record(self, change: PendingChange) -> tuple[ItemChanges, bool]:
        """Send `change` to Redis right after whatever waits in the WAL (order kept); if Redis cannot take it,
        append it to the WAL (fsync'ed) instead. Returns (snapshot including it, whether it was a side item).
        Raises ItemLogUnavailable only when neither Redis nor the file could record it."""
        async with self._lock:
            try:
                wal = await asyncio.to_thread(self.wal.locked)
            except OSError as e:
                raise self._unavailable(e) from e
            try:
                lines = await asyncio.to_thread(wal.lines)
                waiting, bad = self._parse(lines)
                if self.link.up:
                    try:
                        results = await self._send([*waiting, change])
                    except REDIS_DOWN as e:
                        self.link.failed(f"{change.op}_item", e)
                    else:
                        self.link.succeeded(f"{change.op}_item")
                        # In Redis now, whatever happens next: the file must not replay them over newer changes.
                        if lines:
                            await asyncio.to_thread(self._reject, bad)
                            await asyncio.to_thread(wal.clear)
                            log.info("item_changes_replayed", changes=len(waiting), file=str(self.wal.path))
                        had = bool(results[-1][0]) if change.op == "delete" else True
                        try:
                            self._base = await self.snapshot()
                        except REDIS_DOWN as e:  # sent, but not read back: apply them here; the next sync reads them
                            self.link.failed("item_snapshot", e)
                            return replace(fold(self._base, [*waiting, change], ""), pending=0, pending_token=""), had
                        return self._view([]), had
                had = change.item_id in fold(self._base, waiting, "").side
                line = change.to_line()
                await asyncio.to_thread(wal.append, line)
                log.warning("item_change_pending", op=change.op, item_id=change.item_id, file=str(self.wal.path),
                            reason="redis unavailable: applied here, replayed into Redis when it is back")
                return self._view([*lines, line]), had
            except OSError as e:
                raise self._unavailable(e) from e
            finally:
                wal.close()

    def _unavailable(self, e: OSError) -> ItemLogUnavailable:
        return ItemLogUnavailable(f"Redis is unavailable and the local item WAL {self.wal.path} cannot be written "
                                  f"({type(e).__name__}: {e}); the change was not recorded, retry")

    async def _send(self, changes: Sequence[PendingChange]) -> list:
        """Run the change scripts in order, in one pipelined round trip (no MULTI: each script is atomic)."""
        return await self.link.run_scripts([(self._put, self.keys, [c.item_id, c.side]) if c.op == "put"
                                            else (self._delete, self.keys, [c.item_id]) for c in changes])

    # --- the pending file ------------------------------------------------------------------------

    async def replay(self) -> int:
        """Send the WAL's changes to Redis in file order, then truncate it; returns how many were sent.
        REDIS_DOWN propagates and keeps the whole file (a later replay re-applies it: same final state)."""
        async with self._lock:
            wal = await asyncio.to_thread(self.wal.locked)
            try:
                lines = await asyncio.to_thread(wal.lines)
                if not lines:
                    return 0
                waiting, bad = self._parse(lines)
                if waiting:
                    await self._send(waiting)
                await asyncio.to_thread(self._reject, bad)
                await asyncio.to_thread(wal.clear)
            finally:
                wal.close()
        log.info("item_changes_replayed", changes=len(waiting), file=str(self.wal.path))
        return len(waiting)

    def _parse(self, lines: list[str]) -> tuple[list[PendingChange], list[str]]:
        """(readable changes, unreadable lines), cached by content: the sync loop calls this on every tick."""
        token = _token(lines)
        if token != self._parsed[0]:
            good, bad = [], []
            for n, line in enumerate(lines, 1):
                try:
                    good.append(PendingChange.from_line(line))
                except ValueError as e:  # only a torn last write (never acknowledged) looks like this
                    log.error("item_wal_bad_line", file=str(self.wal.path), line=n, error=str(e)[:200])
                    bad.append(line)
            self._parsed = (token, good, bad)
        return self._parsed[1], self._parsed[2]

    def _reject(self, bad: list[str]) -> None:
        """Keep unreadable lines aside (for a human) instead of dropping them with the replayed ones."""
        rejected = WalFile(self.wal.path.with_suffix(".rejected"))
        for line in bad:
            rejected.append(line)

    def _view(self, lines: list[str]) -> ItemChanges:
        """The last Redis snapshot with the WAL's `lines` folded in (cached while neither changes)."""
        token = _token(lines)
        cached = self._folded
        if cached is None or cached[0] != token or cached[1] is not self._base:
            waiting, _ = self._parse(lines)
            cached = self._folded = (token, self._base, fold(self._base, waiting, token))
            self.link.metrics.item_changes_pending.set(len(waiting))
        return cached[2]

    # --- following the shared log ----------------------------------------------------------------

    async def newer_than(self, seen: ItemChanges) -> ItemChanges | None:
        # The WAL is read BEFORE Redis: a sibling worker may replay it meanwhile, and its replay writes Redis
        # before it truncates the file, so a change is in what we read from one or the other (or both, which
        # folds to the same state), never in neither.
        lines = [] if self.wal.looks_empty() else await asyncio.to_thread(self.wal.read_lines)
        if self.link.up:  # while it is down, skip Redis (no timeout per tick); the event monitor's probe revives it
            try:
                if lines:
                    await self.replay()
                    lines = []
                raw = await self.link.client.get(self.keys[2])
                if int(raw or 0) != self._base.version:
                    self._base = await self.snapshot()
                self.link.succeeded("sync_items", "item_snapshot")
            except REDIS_DOWN as e:
                self.link.failed("sync_items", e)
        view = self._view(lines)
        return None if view.same_as(seen) else view

    async def migrate_legacy_keys(self) -> int:
        """Single Redis: move the item keys of the layout before hash tags (``<prefix>items:side`` ...) to their
        tagged names, once, atomically, when only the old ones exist. Returns the keys moved; logs a warning and
        moves nothing when both exist (a worker of the old version wrote after a new one started)."""
        layout = self.link.layout
        moved = int(await self.link.client.eval(_MIGRATE_LUA, 6, *layout.item_keys(), *layout.legacy_item_keys()))
        if moved > 0:
            log.info("item_keys_migrated", keys=moved, to=list(layout.item_keys()))
        elif moved < 0:
            log.warning("item_keys_not_migrated", legacy=list(layout.legacy_item_keys()), current=list(self.keys),
                        reason="both layouts hold keys; the legacy ones are left alone: merge them by hand")
        return max(moved, 0)

    async def snapshot(self) -> ItemChanges:
        """Everything in Redis, read in one MULTI so that the counter matches the contents."""
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


def _token(lines: list[str]) -> str:
    """Identity of a WAL content ("" when empty): equal tokens, equal pending changes."""
    return hashlib.sha1("\n".join(lines).encode(), usedforsecurity=False).hexdigest() if lines else ""
