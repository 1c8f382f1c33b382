"""`mrdib retrain`: fold the interaction events and the admin item changes collected by the service
into the data, retrain, and promote the new model only when it is not worse than the one being served.

One run, under an exclusive file lock (a second concurrent run exits 75 at once)::

    state = ROOT/retrain/state.json          position in each event stream + the dataset the last run produced
    events = XRANGE s (state.cursors[s], end_s] for every stream s: the shards <stream>:{u0} ... (the service
                                             spreads users over them, mrdib/redis_keys.py), and first the
                                             pre-shard stream <stream> itself (what an older service wrote);
                                             end_s = the stream's last id when the run starts
    side = HGETALL {prefix}{items}:side      items PUT through the API (service/items.py), not yet trained on
    no events, no side items (and a model is published)   -> exit 0, nothing written
    dataset + side items                     new ids appended as item rows with their modality features,
                                             known ids get their features replaced (a changed item)
    merged = ... + events                    append-only: old rows keep their splits, new
                                             (user, item) pairs get MMRec's split per user,
                                             unknown users appended, unknown items skipped+counted
                                             (an event on a side item is an interaction: it is in the catalogue now)
    write merged -> ROOT/retrain/datasets/<run>/   (a complete MMRec folder, staged then renamed)
    train candidate (same TrainConfig as the served model; warm-started from its weights: the checkpoint
                    of a retrained version is kept in ROOT/retrain/checkpoints/<version>/, the first model's
                    by deploy/train-and-publish.sh in the same place, or found through its manifest)
    gate: valid Recall@20 of candidate vs served model, on the same users and the same masks
          (logged as the structured event `retrain_gate`, and written into the candidate's manifest)
    pass -> training.export.export_checkpoint publishes it (flips `current`; the service
            polls `current` and switches by itself)                      exit 0
            + the merged side items are removed from the side index (only those unchanged since read)
    fail -> the candidate is exported under ROOT/retrain/rejected/ instead (a complete artifact
            root of its own, for inspection or `mrdib serve`)             exit 3
    commit state.json (atomic rename) = the events are now part of the data, whatever the gate said

Exactly once: the stream positions (one cursor per stream) and the dataset that contains those events are
committed together, in one atomic write, after the merged dataset is complete. A crash before the commit
leaves the old state, so the next run merges the very same events into the very same dataset
again (the split is seeded by the run's position, so it is reproducible); a crash after it has
nothing left to redo. The events of a failed gate stay in the data: they are real interactions,
only that candidate model was rejected.

Side items are not consumed like events: they stay in the service's side index (which serves them
with the current model's item tower) until a model trained on them is promoted. A run after a failed
gate finds them already in its dataset (same features: nothing new to train on). Deleted (hidden) items
stay in the catalogue and in the data -- their past interactions still say something about the users
who had them -- and stay hidden: the service's deleted set applies to every model version, and
retraining never touches it.

Exit status: 0 promoted or nothing to do, 2 bad input (dataset, state file, arguments),
3 quality gate failed, 69 Redis unreachable, 75 another run holds the lock.

Redis: a single server or a Redis Cluster (`--redis-mode cluster`, `--redis-url` naming any node), with the
service's `MRDIB_STREAM_SHARDS`; every key the run touches is one of the service's (mrdib/redis_keys.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mrdib import exits
from mrdib.artifact.store import DEFAULT_ROOT, atomic_write_text
from mrdib.item_meta import ITEM_META_FILE, write_item_meta
from mrdib.redis_keys import DEFAULT_SHARDS, DEFAULT_STREAM, KeyLayout, RedisMode, sync_client
from mrdib.side_items import decode_side, side_item_keys
from training.data.dataset import TRAIN, VALID, DataError, InteractionDataset

# 0 and 2 are the rule of every command (mrdib/exits.py); the others are retrain's own outcomes.
EXIT_OK, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_UNAVAILABLE, EXIT_LOCKED = exits.EXIT_OK, exits.EXIT_USAGE, 3, 69, 75

RETRAIN_DIR = "retrain"
STATE_FILE = "state.json"
LOCK_FILE = "retrain.lock"
DATASETS_DIR = "datasets"
CHECKPOINTS_DIR = "checkpoints"
REJECTED_DIR = "rejected"
STREAM_START = "0-0"
LOGGER = "mrdib.retrain"
_STREAM_ID_RE = re.compile(r"^\d+-\d+$")
# Characters an id may not hold: they would break the tab-separated MMRec files.
_BAD_ID_RE = re.compile(r"[\t\n\r\x00]")


class RetrainError(Exception):
    """Bad input to a retraining run (exit 2). The message names the file or setting."""


class LockedError(Exception):
    """Another retraining run holds the lock (exit 75)."""


# ----------------------------------------------------------------------------------------------------
# Persistent state


class RetrainState(BaseModel):
    """What survives between runs. Written only by `save_state`, atomically.

    Schema 2 keeps one position per stream key (`cursors`); a schema-1 file (one stream, `last_id`) is read
    as the position in that stream, which is the pre-shard stream the new layout still reads first."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 2
    stream: str
    cursors: dict[str, str] = Field(default_factory=dict, description="stream key -> last consumed id")
    dataset: str | None = Field(default=None, description="folder under retrain/datasets holding all merged events")
    events_consumed: int = 0
    runs: int = 0
    updated_at: datetime | None = None
    last_run: dict[str, Any] = Field(default_factory=dict)


    @model_validator(mode="before")
    @classmethod
    def _from_schema_1(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version", 1) == 1 and "last_id" in data:
            last = data["last_id"]
            data = {k: v for k, v in data.items() if k != "last_id"}
            data.update(schema_version=2, cursors={data["stream"]: last} if "stream" in data else {})
        return data

    def cursor(self, stream: str) -> str:
        return self.cursors.get(stream, STREAM_START)


def retrain_dir(root: Path) -> Path:
    return Path(root) / RETRAIN_DIR


def load_state(root: Path, stream: str) -> RetrainState:
    """The saved state, or a fresh one (position 0-0) when none exists yet.

    A state recorded for another stream is an error rather than a silent restart from 0-0, which
    would merge every event of the new stream again.
    """
    path = retrain_dir(root) / STATE_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RetrainState(stream=stream)
    try:
        state = RetrainState.model_validate_json(raw)
    except ValidationError as e:
        raise RetrainError(f"{path}: invalid retraining state: {e}") from e
    if state.stream != stream:
        raise RetrainError(
            f"{path}: records positions in the event stream {state.stream!r} (and its shards), but this run reads "
            f"{stream!r}; move the file away to start over from the streams' beginning"
        )
    for key, last in state.cursors.items():
        if not _STREAM_ID_RE.match(last):
            raise RetrainError(f"{path}: position {last!r} of stream {key!r} is not a stream id like 1700000000000-0")
    return state


def save_state(root: Path, state: RetrainState) -> None:
    atomic_write_text(retrain_dir(root) / STATE_FILE, state.model_dump_json(indent=2) + "\n")


@contextlib.contextmanager
def retrain_lock(root: Path) -> Iterator[Path]:
    """Hold an exclusive, non-blocking flock on ROOT/retrain/retrain.lock; LockedError if taken.

    flock (not a pid file) because the kernel drops it when the holder dies, so a crashed run
    never blocks the next one; the holder's pid is written into the file for humans.
    """
    path = retrain_dir(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below, after unlocking)
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise LockedError(f"{path}: another retraining run holds the lock ({holder})") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


# ----------------------------------------------------------------------------------------------------
# Events from the Redis stream


class StreamEvent(BaseModel):
    """One stream entry as the service writes it (service.events.Event.fields)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    ts: datetime


@dataclass
class EventBatch:
    """Events after a position, up to the stream's end when the read started (one stream, or several: then
    `last_id` is unused and `cursors` holds each stream's new position)."""

    events: list[tuple[str, StreamEvent]]  # (stream id, event)
    last_id: str  # position to store once these are merged (unchanged when there were none)
    malformed: int = 0
    lost_before_read: bool = False  # the stream was trimmed past our position: events were lost
    warnings: list[str] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)  # stream key -> position (read_streams)
    per_stream: dict[str, int] = field(default_factory=dict)  # stream key -> entries read (read_streams)


def _decode(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _id_tuple(stream_id: str) -> tuple[int, int]:
    a, b = stream_id.split("-")
    return int(a), int(b)


def read_events(client: Any, stream: str, after: str, batch: int = 5000) -> EventBatch:
    """Read the entries after `after` (exclusive) up to the last entry present now.

    The end is fixed before reading, so entries appended while a run trains wait for the next run
    instead of being half consumed. `client` is a redis-py client (sync).
    """
    last = client.xrevrange(stream, count=1)
    if not last:
        return EventBatch(events=[], last_id=after)
    end = _decode(last[0][0])
    result = EventBatch(events=[], last_id=after)
    info = client.xinfo_stream(stream)
    deleted = _decode(info.get("max-deleted-entry-id", STREAM_START) or STREAM_START)  # XDEL (Redis >= 7)
    first = info.get("first-entry")
    first_id = _decode(first[0]) if first else end
    # MAXLEN trimming removes the oldest entries: when the last consumed entry is gone and the stream
    # now starts after it, trimming reached our position and may have taken unread entries with it.
    trimmed = after != STREAM_START and _id_tuple(first_id) > _id_tuple(after) and not client.xrange(
        stream, min=after, max=after)
    if trimmed or (_STREAM_ID_RE.match(deleted) and _id_tuple(deleted) > _id_tuple(after)):
        result.lost_before_read = True
        result.warnings.append(
            f"stream {stream!r} was trimmed past the last consumed id {after} (it now starts at {first_id}): "
            "events may have been lost before this run; raise the service's MRDIB_STREAM_MAXLEN or retrain more often"
        )
    if _id_tuple(end) <= _id_tuple(after):
        return result
    cursor = after
    while True:
        rows = client.xrange(stream, min=f"({cursor}", max=end, count=batch)
        for raw_id, raw_fields in rows:
            sid = _decode(raw_id)
            fields = {_decode(k): _decode(v) for k, v in raw_fields.items()}
            try:
                result.events.append((sid, StreamEvent.model_validate(fields)))
            except ValidationError:
                result.malformed += 1
            cursor = sid
        if len(rows) < batch or cursor == end:
            break
    result.last_id = end
    return result


def streams_to_read(layout: KeyLayout, cursors: dict[str, str]) -> list[str]:
    """The pre-shard stream first (older events), then every shard in order, then streams the state knows that
    the current shard count no longer names (a shrunk `MRDIB_STREAM_SHARDS`: their tails are still read)."""
    keys = [layout.legacy_stream, *layout.streams()]
    return keys + sorted(k for k in cursors if k not in keys)


def read_streams(client: Any, streams: Sequence[str], cursors: dict[str, str], batch: int = 5000) -> EventBatch:
    """`read_events` over each stream from its own cursor; a user's events are in one stream, in order, so the
    concatenation keeps every user's order. Streams that do not exist cost one XREVRANGE each."""
    out = EventBatch(events=[], last_id=STREAM_START, cursors=dict(cursors))
    for key in streams:
        one = read_events(client, key, cursors.get(key, STREAM_START), batch)
        out.events += one.events
        out.malformed += one.malformed
        out.lost_before_read |= one.lost_before_read
        out.warnings += one.warnings
        if one.last_id != STREAM_START or key in cursors:
            out.cursors[key] = one.last_id
        if one.events or one.malformed:
            out.per_stream[key] = len(one.events) + one.malformed
    return out


# ----------------------------------------------------------------------------------------------------
# Merge


class MergeReport(BaseModel):
    """Counts of what happened to each event; every event lands in exactly one bucket."""

    events: int = 0
    added: int = 0
    skipped_type: int = 0
    skipped_unknown_item: int = 0
    skipped_bad_id: int = 0
    skipped_duplicate: int = 0
    new_users: int = 0
    users_with_new_interactions: int = 0
    new_by_split: dict[str, int] = Field(default_factory=dict)


def split_seed(last_id: str | dict[str, str]) -> int:
    """Seed of a run's split, derived from the position(s) it ends at: re-running the same merge
    (after a crash before the state commit) reproduces the same dataset."""
    if isinstance(last_id, dict):
        return sum(split_seed(v) for v in last_id.values()) % (2**63)
    ms, seq = _id_tuple(last_id) if _STREAM_ID_RE.match(last_id) else (0, 0)
    return (ms * 1_000_003 + seq) % (2**63)


def merge_events(
    ds: InteractionDataset,
    events: Sequence[StreamEvent],
    seed: int,
    event_types: Sequence[str] | None = None,
) -> tuple[InteractionDataset, MergeReport]:
    """Append the events to `ds` as interactions. Pure: returns a new dataset and the counts.

    - rows of `ds` are kept unchanged, with their splits (append-only);
    - an event for an item outside the catalogue is skipped (the model has no features for it);
    - an unknown user is appended as a new user row;
    - a (user, item) pair already in the data, or repeated among the events, is skipped (the data
      are implicit feedback: one interaction per pair; the first event's timestamp is kept);
    - each user's new interactions are split by MMRec's rule (training.data.split.mmrec_split) among
      themselves, so a user with fewer than 3 new interactions only gains training rows.
    """
    from training.data.split import mmrec_split

    report = MergeReport(events=len(events))
    wanted = set(event_types) if event_types else None
    item_row = {x: i for i, x in enumerate(ds.item_ids)}
    user_row = {x: u for u, x in enumerate(ds.user_ids)}
    user_ids = list(ds.user_ids)
    seen = set((ds.users.astype(np.int64) * ds.n_items + ds.items.astype(np.int64)).tolist())
    new_u: list[int] = []
    new_i: list[int] = []
    new_t: list[int] = []
    for ev in events:
        if wanted is not None and ev.type not in wanted:
            report.skipped_type += 1
            continue
        if _BAD_ID_RE.search(ev.user_id) or _BAD_ID_RE.search(ev.item_id) or ev.user_id != ev.user_id.strip():
            report.skipped_bad_id += 1
            continue
        i = item_row.get(ev.item_id)
        if i is None:
            report.skipped_unknown_item += 1
            continue
        u = user_row.get(ev.user_id)
        if u is None:
            u = len(user_ids)
            user_row[ev.user_id] = u
            user_ids.append(ev.user_id)
            report.new_users += 1
        key = u * ds.n_items + i
        if key in seen:
            report.skipped_duplicate += 1
            continue
        seen.add(key)
        new_u.append(u)
        new_i.append(i)
        new_t.append(int(ev.ts.timestamp()))
    report.added = len(new_u)
    users = np.asarray(new_u, dtype=np.int64)
    splits = mmrec_split(users, np.random.default_rng(seed))
    report.users_with_new_interactions = len(set(new_u))
    report.new_by_split = {name: int((splits == s).sum()) for s, name in ((0, "train"), (1, "valid"), (2, "test"))}
    merged = InteractionDataset(
        name=ds.name,
        users=np.concatenate([ds.users.astype(np.int64), users]),
        items=np.concatenate([ds.items.astype(np.int64), np.asarray(new_i, dtype=np.int64)]),
        timestamps=np.concatenate([ds.timestamps.astype(np.int64), np.asarray(new_t, dtype=np.int64)]),
        splits=np.concatenate([ds.splits.astype(np.int8), splits]),
        user_ids=user_ids,
        item_ids=list(ds.item_ids),
        features=ds.features,
        item_meta=ds.item_meta,
    )
    return merged, report


def write_mmrec(ds: InteractionDataset, out: Path) -> Path:
    """Write `ds` as a complete MMRec folder (staged next to `out`, then renamed into place).

    Files: <name>.inter (userID itemID rating timestamp x_label), <modality>_feat.npy,
    i_id_mapping.csv and u_id_mapping.csv (org_id remap_id), item_meta.jsonl when the dataset has display
    fields, so that training.data.mmrec.load_mmrec reads back exactly `ds`.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lines = ["userID\titemID\trating\ttimestamp\tx_label"]
        lines += [
            f"{u}\t{i}\t1\t{t}\t{s}"
            for u, i, t, s in zip(ds.users.tolist(), ds.items.tolist(), ds.timestamps.tolist(), ds.splits.tolist(),
                                  strict=True)
        ]  # fmt: skip
        (stage / f"{ds.name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for m, x in ds.features.items():
            np.save(stage / f"{m}_feat.npy", np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        for name, ids in (("i_id_mapping.csv", ds.item_ids), ("u_id_mapping.csv", ds.user_ids)):
            body = "\n".join(f"{x}\t{k}" for k, x in enumerate(ids))
            (stage / name).write_text("org_id\tremap_id\n" + body + "\n", encoding="utf-8")
        if ds.item_meta is not None:
            write_item_meta(stage / ITEM_META_FILE, ds.item_ids, ds.item_meta)
        for p in stage.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------------------------------
# Side items (PUT /items through the API), merged into the catalogue


@dataclass(frozen=True)
class SideRecord:
    """One PUT item as read from the side index (format: mrdib/side_items.py), with its id. `raw` is the
    stored value itself, so that clearing removes exactly what was merged and never a newer PUT of the same id."""

    item_id: str
    features: dict[str, np.ndarray]
    put_at: datetime
    raw: bytes
    meta: dict | None = None  # display fields the PUT carried (None: keep the catalogue's)


@dataclass
class SideSnapshot:
    """The side index and the deleted set, read together (one MULTI)."""

    items: dict[str, SideRecord] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    unreadable: dict[str, str] = field(default_factory=dict)  # item id -> what is wrong with its record


def decode_side_record(item_id: str, raw: bytes | str) -> SideRecord:
    """Parse one side-index value; ValueError naming the problem for anything the service would not write."""
    raw_b = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    item = decode_side(raw_b)
    return SideRecord(item_id, dict(item.features), item.put_at, raw_b, item.meta)


def read_side_items(client: Any, prefix: str = "") -> SideSnapshot:
    """Every side item and every deleted id, in one transaction (a consistent snapshot)."""
    side_key, deleted_key, _ = side_item_keys(prefix)
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(side_key)
        pipe.smembers(deleted_key)
        side_raw, deleted_raw = pipe.execute()
    snap = SideSnapshot(deleted=frozenset(_decode(x) for x in deleted_raw))
    for k, v in side_raw.items():
        item_id = _decode(k)
        try:
            snap.items[item_id] = decode_side_record(item_id, v)
        except ValueError as e:
            snap.unreadable[item_id] = str(e)
    return snap


class SideReport(BaseModel):
    """What happened to each side item; `added + updated + unchanged + rejected == items`."""

    items: int = 0
    added: int = 0  # new ids: appended to the catalogue
    updated: int = 0  # known ids with new features: their feature rows replaced
    unchanged: int = 0  # already in the dataset with the same features (e.g. merged by a run whose gate failed)
    rejected: int = 0  # bad id, missing/extra modality, wrong dimension, non-finite values: left in the side index
    unreadable: int = 0  # records that are not the service's format: left alone
    hidden: int = 0  # ids in the deleted set: kept in the data, hidden by the service
    cleared: int = 0  # removed from the side index after the promotion of a model trained on them


def _side_problem(item: SideRecord, dims: dict[str, int]) -> str | None:
    if not item.item_id or _BAD_ID_RE.search(item.item_id) or item.item_id != item.item_id.strip():
        return "its id is empty, has surrounding spaces, or holds a tab/newline/NUL"
    if set(item.features) != set(dims):
        return f"modalities {sorted(item.features)} differ from the dataset's {sorted(dims)}"
    for m, d in dims.items():
        x = item.features[m]
        if x.shape != (d,):
            return f"modality {m!r} has {x.shape[0]} values, the dataset has {d}"
        if not np.isfinite(x).all():
            return f"modality {m!r} holds NaN or infinite values"
    return None


def merge_side_items(
    ds: InteractionDataset, items: Iterable[SideRecord]
) -> tuple[InteractionDataset, SideReport, list[SideRecord], list[str]]:
    """Put the side items into the catalogue. Pure: returns (dataset, report, merged items, warnings).

    A new id becomes a new item row at the end (rows stay append-only, so a warm start still maps old
    rows to the same items); a known id gets its feature rows replaced. Display fields a PUT carried replace
    the item's (a new item without any has none; a known one keeps its own). Interactions are untouched:
    the events merged next are what gives the new items interactions. Items are taken in PUT order
    (then id), so the same side index always yields the same dataset. `merged` lists every item the
    returned dataset holds exactly (added, updated, unchanged): those can leave the side index once a
    model trained on this dataset is promoted.
    """
    dims = dict(ds.feature_dims)
    report = SideReport()
    warnings: list[str] = []
    merged: list[SideRecord] = []
    item_row = {x: i for i, x in enumerate(ds.item_ids)}
    updates: dict[int, SideRecord] = {}
    new: list[SideRecord] = []
    for item in sorted(items, key=lambda s: (s.put_at, s.item_id)):
        report.items += 1
        problem = _side_problem(item, dims)
        if problem is not None:
            report.rejected += 1
            warnings.append(f"side item {item.item_id!r} not merged: {problem}")
            continue
        r = item_row.get(item.item_id)
        if r is None:
            item_row[item.item_id] = ds.n_items + len(new)
            new.append(item)
            report.added += 1
        elif all(np.array_equal(ds.features[m][r], item.features[m]) for m in dims) and (
                item.meta is None or (ds.item_meta is not None and ds.item_meta[r] == item.meta)):
            report.unchanged += 1
        else:
            updates[r] = item
            report.updated += 1
        merged.append(item)
    if not new and not updates:
        return ds, report, merged, warnings
    features: dict[str, np.ndarray] = {}
    for m, x in ds.features.items():
        x = np.array(x, dtype=np.float32, copy=True)
        for r, item in updates.items():
            x[r] = item.features[m]
        if new:
            x = np.concatenate([x, np.stack([item.features[m] for item in new]).astype(np.float32)])
        features[m] = np.ascontiguousarray(x)
    item_meta = ds.item_meta
    if item_meta is not None or any(item.meta is not None for item in (*new, *updates.values())):
        item_meta = [dict(rec) for rec in ds.item_meta] if ds.item_meta is not None else [{} for _ in ds.item_ids]
        for r, item in updates.items():
            if item.meta is not None:
                item_meta[r] = dict(item.meta)
        item_meta += [dict(item.meta or {}) for item in new]
    out = InteractionDataset(
        name=ds.name, users=ds.users, items=ds.items, timestamps=ds.timestamps, splits=ds.splits,
        user_ids=list(ds.user_ids), item_ids=[*ds.item_ids, *(item.item_id for item in new)], features=features,
        item_meta=item_meta,
    )  # fmt: skip
    return out, report, merged, warnings


# KEYS: side hash.  ARGV: id1, value1, id2, value2, ...  Deletes each id whose value is still the one merged.
_CLEAR_SIDE_LUA = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


def clear_side_items(client: Any, items: Sequence[SideRecord], prefix: str = "") -> int:
    """Remove merged side items from the side index, each only if unchanged since it was read (a PUT
    during the run stays for the next one). Atomic (one Lua script); returns how many were removed.

    The change counter (`items:ver`) is deliberately not incremented: clearing is not an item change.
    Every version from the promoted one on holds these items itself (the service skips side items that
    a version built after their PUT contains), so no worker needs to rebuild its overlay -- and a worker
    still on the previous version, until it picks up the new `current`, keeps serving them from its
    overlay instead of losing them for a poll interval.
    """
    if not items:
        return 0
    args: list[Any] = []
    for item in items:
        args += [item.item_id, item.raw]
    return int(client.eval(_CLEAR_SIDE_LUA, 1, side_item_keys(prefix)[0], *args))


# ----------------------------------------------------------------------------------------------------
# Quality gate


class GateResult(BaseModel):
    """The promotion decision, stored in the candidate's manifest (`quality_gate`)."""

    metric: str
    split: str = "valid"
    candidate: float
    current: float | None
    current_version: str | None
    tolerance: float
    passed: bool
    reason: str
    n_users: int
    candidate_full_valid: float | None = None
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def gate_decision(candidate: float, current: float | None, tolerance: float) -> tuple[bool, str]:
    """Pass when there is no current model, or the candidate is at most `tolerance` (absolute) worse."""
    if not math.isfinite(candidate):
        return False, f"candidate metric is {candidate}"
    if current is None:
        return True, "no model is being served"
    if candidate >= current - tolerance:
        return True, f"candidate {candidate:.4f} >= current {current:.4f} - tolerance {tolerance:.4f}"
    return False, f"candidate {candidate:.4f} < current {current:.4f} - tolerance {tolerance:.4f}"


def _metric_parts(metric: str) -> tuple[str, int]:
    m = re.fullmatch(r"([a-z]+)@(\d+)", metric)
    if not m:
        raise RetrainError(f"gate metric {metric!r} must look like recall@20")
    return m.group(1), int(m.group(2))


def gate_scores(
    ds: InteractionDataset,
    candidate_user: np.ndarray,
    candidate_item: np.ndarray,
    current: Any | None,
    metric: str = "recall@20",
) -> tuple[float, float | None, int]:
    """(candidate, current, n_users): `metric` on the VALID split of `ds` for both models.

    Both are measured on the same users (those the current model knows, so new users do not
    penalise it for not existing), with the same training rows masked, by the project's evaluator.
    `current` is a mrdib.artifact.store.LoadedArtifact (or None: only the candidate is measured,
    on every user). Items the current model lacks score -inf for it.
    """
    import torch

    from training.evaluation.evaluator import run_evaluation

    _, k = _metric_parts(metric)
    mask = ds.csr(TRAIN)
    target = ds.csr(VALID)
    pop = ds.item_popularity()
    cur_u_rows = None
    if current is not None:
        urow = {x: r for r, x in enumerate(current.user_ids)}
        irow = {x: r for r, x in enumerate(current.item_ids)}
        cur_u_rows = np.asarray([urow.get(x, -1) for x in ds.user_ids], dtype=np.int64)
        cur_i_rows = np.asarray([irow.get(x, -1) for x in ds.item_ids], dtype=np.int64)
        keep = (cur_u_rows >= 0).astype(np.float32)
        target = target.multiply(keep[:, None]).tocsr()
        target.eliminate_zeros()
        cur_items = np.zeros((ds.n_items, current.item_vectors.shape[1]), dtype=np.float32)
        cur_items[cur_i_rows >= 0] = current.item_vectors[cur_i_rows[cur_i_rows >= 0]]
        cur_item_t = torch.as_tensor(cur_items)
        missing_items = torch.as_tensor(cur_i_rows < 0)
        cur_user_t = torch.as_tensor(np.asarray(current.user_vectors, dtype=np.float32))

    cand_user_t = torch.as_tensor(np.asarray(candidate_user, dtype=np.float32))
    cand_item_t = torch.as_tensor(np.asarray(candidate_item, dtype=np.float32))

    def cand_fn(users: torch.Tensor) -> torch.Tensor:
        return cand_user_t[users] @ cand_item_t.T

    cand = run_evaluation(cand_fn, mask, target, pop, ks=[k])
    cur_value: float | None = None
    if current is not None:
        rows_t = torch.as_tensor(cur_u_rows)

        def cur_fn(users: torch.Tensor) -> torch.Tensor:
            s = cur_user_t[rows_t[users]] @ cur_item_t.T
            s[:, missing_items] = float("-inf")
            return s

        cur_value = float(run_evaluation(cur_fn, mask, target, pop, ks=[k])[metric])
    return float(cand[metric]), cur_value, int(cand["n_users"])


# ----------------------------------------------------------------------------------------------------
# Warm start


def warm_start_state(
    new: dict[str, Any], old: dict[str, Any], learned: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, int]]:
    """Initialise a fresh model's tensors from the previous model's.

    Same name and shape: copied. Same name, shape differing only in the first dimension (user and item
    embeddings after new users/items were appended; rows are append-only, so row r is the same user or
    item): the common leading rows are copied, the rest keep their fresh initialisation. Anything else
    keeps its fresh value. `learned`, when given, names the tensors training changes (trainable
    parameters); every other tensor -- item features kept as frozen parameters, statistics of the
    features kept as buffers -- is data, and must come from the new dataset (a changed item's new
    features, not its old ones), so it keeps its fresh value ("data"). Returns the new state and counts
    {"copied", "partial", "fresh", "data"}.
    """
    out = dict(new)
    counts = {"copied": 0, "partial": 0, "fresh": 0, "data": 0}
    for name, t in new.items():
        o = old.get(name)
        if learned is not None and name not in learned:
            counts["data"] += 1
        elif o is None or getattr(o, "dtype", None) != t.dtype:
            counts["fresh"] += 1
        elif tuple(o.shape) == tuple(t.shape):
            out[name] = o.clone()
            counts["copied"] += 1
        elif o.ndim == t.ndim >= 1 and tuple(o.shape[1:]) == tuple(t.shape[1:]):
            n = min(o.shape[0], t.shape[0])
            merged = t.clone()
            merged[:n] = o[:n]
            out[name] = merged
            counts["partial"] += 1
        else:
            counts["fresh"] += 1
    return out, counts


def find_warm_checkpoint(root: Path, current: Any | None) -> tuple[Path | None, str]:
    """The model weights (model.safetensors) of the run that produced the served version, and where
    they were found -- or (None, why not).

    1. ROOT/retrain/checkpoints/<version>/: kept by every promoting retrain, and by
       deploy/train-and-publish.sh for the first model (compose's trainer, the Kubernetes bootstrap Job).
    2. The checkpoint folder the manifest's training config names (`out`), when it is still there and is
       provably the run that was exported: its dataset fingerprint equals the manifest's and its item
       embeddings equal the artifact's item vectors (quickstart.sh keeps runs/<ts>/, for instance).
    """
    from training import checkpoint as ckpt

    if current is None:
        return None, "no model is being served"
    version = current.manifest.model_version
    kept = retrain_dir(root) / CHECKPOINTS_DIR / version / ckpt.MODEL
    if kept.is_file():
        return kept, f"{RETRAIN_DIR}/{CHECKPOINTS_DIR}/{version}"
    out = (current.manifest.training_config or {}).get("out")
    if not out:
        return None, f"no checkpoint of {version} in {kept.parent} and its manifest names no training folder"
    run = Path(out)
    if not (run / ckpt.MODEL).is_file():
        return None, f"no checkpoint of {version} in {kept.parent} nor in {run} (its training folder)"
    try:
        info = ckpt.read_json(run, ckpt.DATASET)
        same = info.get("fingerprint") == current.manifest.data_fingerprint and np.array_equal(
            ckpt.load_embeddings(run).item, current.item_vectors)
    except Exception as e:  # unreadable leftovers: not the run we are looking for
        return None, f"{run}: not usable as the checkpoint of {version} ({type(e).__name__}: {e})"
    if not same:
        return None, f"{run} was trained again after {version} was exported: not its checkpoint"
    return run / ckpt.MODEL, str(run)


def _warm_factory(weights: Path, version: str, record: dict[str, Any]):
    """A model factory that starts from `weights` (the served model's); fills `record` when it runs."""
    from safetensors.torch import load_file

    from training.trainer import default_model_factory

    def factory(cfg, ctx):
        model = default_model_factory(cfg, ctx)
        old = load_file(str(weights))
        learned = {n for n, p in model.named_parameters() if p.requires_grad}
        state, counts = warm_start_state(model.state_dict(), old, learned)
        model.load_state_dict(state)
        record.update({"from_version": version, "checkpoint": str(weights), **counts})
        return model

    return factory


# ----------------------------------------------------------------------------------------------------
# The run


class RetrainSettings(BaseModel):
    """Every knob of a run (CLI options and environment variables end up here)."""

    model_config = ConfigDict(extra="forbid")

    artifacts: Path
    base: Path
    redis_url: str
    redis_mode: RedisMode = Field("single", description="single Redis or Redis Cluster (MRDIB_REDIS_MODE)")
    stream: str = DEFAULT_STREAM
    shards: int = Field(DEFAULT_SHARDS, ge=1, le=16384, description="the service's MRDIB_STREAM_SHARDS")
    key_prefix: str = Field("", description="prefix of the service's Redis keys (MRDIB_REDIS_KEY_PREFIX)")
    side_items: bool = Field(True, description="merge the items PUT through the API into the catalogue")
    tolerance: float = Field(0.01, ge=0.0, le=1.0)
    metric: str = "recall@20"
    event_types: list[str] = Field(default_factory=list, description="empty = every event type")
    backbone: str = "freedom"
    mrdib: bool = True
    epochs: int | None = Field(None, ge=1)
    tower_epochs: int | None = Field(None, ge=1, description="epochs of each export tower fit; None = export default")
    keep_versions: int = Field(5, ge=1, description="published versions the export keeps (current never pruned)")
    device: str = "auto"
    warm_start: bool = True
    force: bool = False
    keep_datasets: int = Field(3, ge=1)
    work: Path | None = None

    @model_validator(mode="after")
    def _valid_names(self) -> RetrainSettings:
        self.layout  # noqa: B018 (raises ValueError naming a brace in the prefix or stream)
        return self

    @property
    def layout(self) -> KeyLayout:
        return KeyLayout(prefix=self.key_prefix, stream=self.stream, shards=self.shards)


@dataclass
class RunReport:
    status: str  # promoted | nothing-to-do | gate-failed
    exit_code: int
    details: dict[str, Any]

    def lines(self) -> list[str]:
        d = self.details
        out = [f"retrain: {self.status}"]
        if "events" in d:
            per = d.get("streams") or {}
            where = ", ".join(f"{k}: {n}" for k, n in per.items()) if per else "none new"
            out.append(f"  events read: {d['events']} (malformed {d.get('malformed', 0)}) from {len(per)} stream(s) "
                       f"({where})")
        if "side_items" in d:
            s = d["side_items"]
            out.append(
                f"  side items: {s['items']} read, +{s['added']} new, {s['updated']} changed, {s['unchanged']} "
                f"already in the data, {s['rejected']} rejected, {s['cleared']} cleared; {s['hidden']} hidden ids"
            )
        if "merge" in d:
            m = d["merge"]
            out.append(
                f"  merged: +{m['added']} interactions ({m['new_by_split']}), {m['new_users']} new users; skipped "
                f"{m['skipped_unknown_item']} unknown item, {m['skipped_duplicate']} duplicate, "
                f"{m['skipped_type']} type, {m['skipped_bad_id']} bad id"
            )
        if "warm_start" in d:
            w = d["warm_start"]
            if w.get("from_version"):
                out.append(f"  warm start from {w['from_version']} ({w['checkpoint']}): {w['copied']} tensors "
                           f"copied, {w['partial']} grown, {w['fresh']} fresh, {w['data']} from the data")
            else:
                out.append(f"  cold start: {w.get('reason')}")
        if "gate" in d:
            g = d["gate"]
            cur = "none" if g["current"] is None else f"{g['current']:.4f}"
            out.append(
                f"  gate {g['metric']} (valid, {g['n_users']} users): candidate {g['candidate']:.4f}, "
                f"current {cur}, tolerance {g['tolerance']} -> {'PASS' if g['passed'] else 'FAIL'}"
            )
        if d.get("version"):
            out.append(f"  version: {d['version']} (now current)")
        if d.get("rejected_version"):
            out.append(f"  rejected candidate exported as {d['rejected_version']} under {RETRAIN_DIR}/{REJECTED_DIR}/")
        for w in d.get("warnings", []):
            out.append(f"  warning: {w}")
        return out


def _load_dataset(path: Path) -> InteractionDataset:
    from training.data.load import load_dataset

    return load_dataset(path)


def _train_config(settings: RetrainSettings, current: Any | None, data: Path, out: Path):
    """The served model's TrainConfig (so a retrain changes the data, not the recipe), else defaults."""
    from training.config import TrainConfig, load_config

    cfg = None
    if current is not None and current.manifest.training_config:
        try:
            cfg = TrainConfig.model_validate(current.manifest.training_config)
        except ValidationError:
            cfg = None
    if cfg is None:
        recipe = {"backbone.name": settings.backbone, "mrdib.enabled": settings.mrdib, "data": str(data)}
        cfg = load_config(None, recipe)  # data too: it picks the sparse or the dense presets
    updates: dict[str, Any] = {"data": str(data), "out": str(out), "device": settings.device}
    if settings.epochs is not None:
        updates["epochs"] = settings.epochs
    return cfg.model_copy(update=updates)


def _publish(settings: RetrainSettings, checkpoint: Path, gate: GateResult, side_merged: Sequence[SideRecord]) -> str:
    """Export the candidate with the real export pipeline (ONNX towers, FAISS indexes, verified
    manifest carrying the gate verdict). Promoted: into the artifacts root, which flips `current`.
    Rejected: into ROOT/retrain/rejected, so the served model stays and the candidate can be inspected.

    The manifest also names the side-index records merged (id -> put time): the service keeps serving a
    record PUT after this run read the side index, rather than guessing from the version's creation time."""
    from training.export import ExportError, export_checkpoint

    root = Path(settings.artifacts)
    target = root if gate.passed else retrain_dir(root) / REJECTED_DIR
    options: dict[str, Any] = {
        "quality_gate": gate.model_dump(mode="json"), "keep": settings.keep_versions,
        "side_items_merged": {item.item_id: item.put_at for item in side_merged},
    }
    if settings.tower_epochs is not None:
        options["tower_epochs"] = settings.tower_epochs
    try:
        manifest = export_checkpoint(checkpoint, target, **options)
    except ExportError as e:
        raise RetrainError(f"export of candidate {checkpoint} failed: {e}") from None
    return manifest.model_version


def _log_gate(gate: GateResult) -> None:
    """The promotion decision as one structured log event (JSON on stderr under `mrdib retrain`), so that
    a log pipeline sees both numbers and the tolerance without parsing the report. A fresh logger per
    call: structlog caches bound loggers on first use, which would hide later events from capture_logs."""
    structlog.get_logger(LOGGER).info(
        "retrain_gate", decision="promote" if gate.passed else "reject", passed=gate.passed, metric=gate.metric,
        split=gate.split, candidate=gate.candidate, current=gate.current, current_version=gate.current_version,
        tolerance=gate.tolerance, n_users=gate.n_users, reason=gate.reason,
    )  # fmt: skip


def run_retrain(settings: RetrainSettings, client: Any | None = None) -> RunReport:
    """One retraining run (see the module docstring). Raises RetrainError / LockedError / DataError,
    and redis-py's ConnectionError / TimeoutError when Redis cannot be read.

    `client`: a sync redis-py client (default: one from settings.redis_url).
    """
    from mrdib.artifact import store

    root = Path(settings.artifacts)
    _metric_parts(settings.metric)
    with retrain_lock(root):
        state = load_state(root, settings.stream)
        rdir = retrain_dir(root)
        current = store.load_current(root, verify=False)
        if client is None:
            client = sync_client(settings.redis_url, settings.redis_mode, socket_connect_timeout=5, socket_timeout=60)
        batch = read_streams(client, streams_to_read(settings.layout, state.cursors), state.cursors)
        side = read_side_items(client, settings.key_prefix) if settings.side_items else SideSnapshot()
        details: dict[str, Any] = {"events": len(batch.events), "malformed": batch.malformed,
                                   "streams": batch.per_stream, "warnings": list(batch.warnings)}
        details["warnings"] += [f"side item {k!r} left alone: {v}" for k, v in sorted(side.unreadable.items())]
        if not batch.events and batch.malformed == 0 and not side.items and current is not None and not settings.force:
            return RunReport("nothing-to-do", EXIT_OK, details)

        if state.dataset:
            source = rdir / DATASETS_DIR / state.dataset
            if not source.is_dir():
                raise RetrainError(f"{source}: the merged dataset that {rdir / STATE_FILE} names does not exist; "
                                   "restore it, or move state.json away to start over from the base dataset")
        else:
            source = Path(settings.base)
            if not source.is_dir():
                raise RetrainError(f"{source}: base dataset folder does not exist (--base / MRDIB_DATASET)")
        ds = _load_dataset(source)
        ds, side_report, side_merged, side_warnings = merge_side_items(ds, side.items.values())
        side_report.unreadable, side_report.hidden = len(side.unreadable), len(side.deleted)
        details["warnings"] += side_warnings
        merged, merge = merge_events(ds, [e for _, e in batch.events], split_seed(batch.cursors),
                                     settings.event_types or None)
        details["side_items"] = side_report.model_dump()
        details["merge"] = merge.model_dump()
        new_state = state.model_copy(update={
            "cursors": batch.cursors, "events_consumed": state.events_consumed + len(batch.events),
            "runs": state.runs + 1, "updated_at": datetime.now(UTC)})  # fmt: skip
        data_changed = bool(merge.added or side_report.added or side_report.updated)
        if not data_changed and current is not None and not settings.force:
            # Nothing new to learn from. Events were read: move the position, keep the data. Only side items
            # already in the data (a failed gate's): write nothing at all.
            if batch.cursors != state.cursors or batch.malformed:
                new_state.last_run = {"status": "nothing-to-do", **details}
                save_state(root, new_state)
            return RunReport("nothing-to-do", EXIT_OK, details)

        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{split_seed(batch.cursors):x}"
        data_dir = source
        if data_changed:
            data_dir = write_mmrec(merged, rdir / DATASETS_DIR / run_id)
            merged = _load_dataset(data_dir)  # train on exactly what was written
        work = Path(settings.work) if settings.work else rdir / "work"
        ckpt_dir = work / f"candidate-{run_id}"
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        cfg = _train_config(settings, current, data_dir, ckpt_dir)
        from training.checkpoint import load_embeddings, read_json
        from training.trainer import train

        warm: dict[str, Any] = {}
        factory = None
        if settings.warm_start:
            weights, where = find_warm_checkpoint(root, current)
            if weights is not None:
                factory = _warm_factory(weights, current.manifest.model_version, warm)
            else:
                warm = {"from_version": None, "reason": where}
        else:
            warm = {"from_version": None, "reason": "--cold-start"}
        t0 = time.perf_counter()
        result = train(cfg, merged, ckpt_dir, progress=False, model_factory=factory)
        details["train_seconds"] = round(time.perf_counter() - t0, 1)
        details["warm_start"] = warm
        first = result.history[0]["loss"] if result.history else {}
        details["train"] = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                            "first_epoch_loss": first.get("loss"), "stopped_early": result.stopped_early}
        emb = load_embeddings(ckpt_dir)
        cand, cur, n_users = gate_scores(merged, emb.user, emb.item, current, settings.metric)
        passed, reason = gate_decision(cand, cur, settings.tolerance)
        full_valid = read_json(ckpt_dir, "metrics.json").get("valid", {}).get(settings.metric)
        gate = GateResult(
            metric=settings.metric, candidate=cand, current=cur,
            current_version=current.manifest.model_version if current is not None else None,
            tolerance=settings.tolerance, passed=passed, reason=reason, n_users=n_users,
            candidate_full_valid=full_valid,
        )  # fmt: skip
        _log_gate(gate)
        details["gate"] = gate.model_dump(mode="json")
        version = _publish(settings, ckpt_dir, gate, side_merged)
        details["version" if passed else "rejected_version"] = version
        if passed:
            keep = rdir / CHECKPOINTS_DIR / version
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt_dir / "model.safetensors", keep / "model.safetensors")
        new_state.dataset = data_dir.name if data_dir != Path(settings.base) else state.dataset
        status = "promoted" if passed else "gate-failed"
        new_state.last_run = {"status": status, **details}
        save_state(root, new_state)
        if passed and side_merged:
            # After the commit: the promoted version holds these items, the side index need not.
            try:
                details["side_items"]["cleared"] = clear_side_items(client, side_merged, settings.key_prefix)
            except Exception as e:  # Redis gone since the read: harmless, the service skips items a version holds
                details["warnings"].append(f"merged side items not cleared from the side index ({type(e).__name__}: "
                                           f"{e}); the next promotion clears them")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        _prune(rdir, new_state, settings.keep_datasets, store.list_versions(root))
        return RunReport(status, EXIT_OK if passed else EXIT_GATE_FAILED, details)


def _prune(rdir: Path, state: RetrainState, keep: int, versions: list[str]) -> None:
    """Drop old merged datasets (never the one in state) and checkpoints of pruned versions."""
    dsets = sorted(p for p in (rdir / DATASETS_DIR).glob("*") if p.is_dir() and not p.name.startswith("."))
    for p in dsets[:-keep]:
        if p.name != state.dataset:
            shutil.rmtree(p, ignore_errors=True)
    for p in (rdir / CHECKPOINTS_DIR).glob("*"):
        if p.is_dir() and p.name not in versions:
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# CLI


def _settings_error(e: ValidationError) -> str:
    """One line per bad setting, named as on the command line: "--tolerance: Input should be ... (got 5.0)"."""
    parts = []
    for err in e.errors():
        name = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-")
        parts.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def retrain_command(
    artifacts: Path = typer.Option(DEFAULT_ROOT, "--artifacts", envvar="MRDIB_ARTIFACTS",
                                   help="Artifacts root (holds `current`, the versions and retrain/); the default, "
                                        "as `mrdib serve`'s, is where quickstart.sh publishes from the repository "
                                        "root."),
    base: Path = typer.Option(Path("/data/dataset"), "--base", envvar="MRDIB_DATASET",
                              help="Base MMRec dataset, used until a run has produced a merged one."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="REDIS_URL",
                                  help="Redis holding the event streams and the API-added items (cluster: any node)."),
    redis_mode: str = typer.Option("single", "--redis-mode", envvar="MRDIB_REDIS_MODE",
                                   help="single | cluster (as the service's MRDIB_REDIS_MODE)."),
    stream: str = typer.Option(DEFAULT_STREAM, "--stream", envvar="MRDIB_STREAM",
                               help="Base name of the event streams (as the service's MRDIB_STREAM)."),
    shards: int = typer.Option(DEFAULT_SHARDS, "--stream-shards", envvar="MRDIB_STREAM_SHARDS",
                               help="Event streams the service spreads users over (its MRDIB_STREAM_SHARDS)."),
    key_prefix: str = typer.Option("", "--key-prefix", envvar="MRDIB_REDIS_KEY_PREFIX",
                                   help="Prefix of the service's Redis keys (where PUT /items are kept).",
                                   show_default="none"),
    side_items: bool = typer.Option(True, "--side-items/--no-side-items",
                                    help="Merge the items PUT through the API into the catalogue."),
    tolerance: float = typer.Option(0.01, "--tolerance", envvar="MRDIB_RETRAIN_TOLERANCE",
                                    help="Promote when candidate >= current - tolerance (absolute)."),
    metric: str = typer.Option("recall@20", "--metric", help="Validation metric of the gate."),
    event_types: str = typer.Option("", "--event-types", envvar="MRDIB_RETRAIN_EVENT_TYPES",
                                    help="Comma-separated event types to learn from.", show_default="all"),
    backbone: str = typer.Option("freedom", "--backbone", envvar="MRDIB_BACKBONE",
                                 help="Backbone when no model is served yet (else the served model's config)."),
    mrdib: bool = typer.Option(True, "--mrdib/--no-mrdib", envvar="MRDIB_PLUGIN",
                               help="MRdIB plug-in when no model is served yet (env: 1/0)."),
    epochs: int | None = typer.Option(None, "--epochs", envvar="MRDIB_RETRAIN_EPOCHS",
                                      help="Maximum epochs.", show_default="the served model's config"),
    tower_epochs: int | None = typer.Option(None, "--tower-epochs", envvar="MRDIB_RETRAIN_TOWER_EPOCHS",
                                            help="Epochs of each export tower fit.", show_default="export's"),
    keep: int = typer.Option(5, "--keep", envvar="MRDIB_KEEP_VERSIONS", help="Published versions to keep."),
    work: Path | None = typer.Option(None, "--work", envvar="MRDIB_WORK",
                                     help="Scratch space for the candidate checkpoint (default ROOT/retrain/work)."),
    device: str = typer.Option("auto", "--device", envvar="MRDIB_DEVICE",
                               help="auto (cuda if available), cpu or cuda."),
    warm_start: bool = typer.Option(True, "--warm-start/--cold-start", help="Start from the served model's weights."),
    force: bool = typer.Option(False, "--force", help="Retrain even without new events."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Merge new events and API-added items into the dataset, retrain, and promote the model if it passes
    the quality gate."""
    from service.logs import configure_logging  # structlog + stdlib only: no service dependencies

    configure_logging()  # the gate decision (and redis-py's complaints) as JSON lines on stderr
    try:
        settings = RetrainSettings(
            artifacts=artifacts, base=base, redis_url=redis_url, redis_mode=redis_mode, stream=stream, shards=shards,
            key_prefix=key_prefix,
            side_items=side_items, tolerance=tolerance, metric=metric,
            event_types=[t.strip() for t in event_types.split(",") if t.strip()], backbone=backbone, mrdib=mrdib,
            epochs=epochs, tower_epochs=tower_epochs, keep_versions=keep, device=device, warm_start=warm_start,
            force=force, work=work,
        )  # fmt: skip
    except ValidationError as e:
        typer.echo(f"retrain: bad settings: {_settings_error(e)}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    import redis

    try:
        report = run_retrain(settings)
    except LockedError as e:
        typer.echo(f"retrain: {e}", err=True)
        raise typer.Exit(EXIT_LOCKED) from None
    except (RetrainError, DataError) as e:
        typer.echo(f"retrain: {e}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ClusterDownError,
            redis.exceptions.RedisClusterException) as e:
        typer.echo(f"retrain: Redis unreachable at {settings.redis_url} ({settings.redis_mode}): "
                   f"{type(e).__name__}: {e}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if as_json:
        typer.echo(json.dumps({"status": report.status, **report.details}, indent=2, default=str))
    else:
        typer.echo("\n".join(report.lines()))
    raise typer.Exit(report.exit_code)
