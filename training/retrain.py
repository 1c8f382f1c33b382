"""`mrdib retrain`: fold the interaction events collected by the service into the data, retrain,
and promote the new model only when it is not worse than the one being served.

One run, under an exclusive file lock (a second concurrent run exits 75 at once)::

    state = ROOT/retrain/state.json          stream position + the dataset the last run produced
    events = XRANGE stream (state.last_id, end]   end = the stream's last id when the run starts
    no events (and a model is published)     -> exit 0, nothing written
    merged = dataset + events                append-only: old rows keep their splits, new
                                             (user, item) pairs get MMRec's split per user,
                                             unknown users appended, unknown items skipped+counted
    write merged -> ROOT/retrain/datasets/<run>/   (a complete MMRec folder, staged then renamed)
    train candidate (same TrainConfig as the served model; warm-started from its weights)
    gate: valid Recall@20 of candidate vs served model, on the same users and the same masks
    pass -> training.export.export_checkpoint publishes it (flips `current`; the service
            polls `current` and switches by itself)                      exit 0
    fail -> the candidate is exported under ROOT/retrain/rejected/ instead (a complete artifact
            root of its own, for inspection or `mrdib serve`)             exit 3
    commit state.json (atomic rename) = the events are now part of the data, whatever the gate said

Exactly once: the stream position and the dataset that contains those events are committed
together, in one atomic write, after the merged dataset is complete. A crash before the commit
leaves the old state, so the next run merges the very same events into the very same dataset
again (the split is seeded by the run's position, so it is reproducible); a crash after it has
nothing left to redo. The events of a failed gate stay in the data: they are real interactions,
only that candidate model was rejected.

Exit status: 0 promoted or nothing to do, 2 bad input (dataset, state file, arguments),
3 quality gate failed, 69 Redis unreachable, 75 another run holds the lock.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrdib.artifact.store import atomic_write_text
from training.data.dataset import TRAIN, VALID, DataError, InteractionDataset

EXIT_OK, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_UNAVAILABLE, EXIT_LOCKED = 0, 2, 3, 69, 75

RETRAIN_DIR = "retrain"
STATE_FILE = "state.json"
LOCK_FILE = "retrain.lock"
DATASETS_DIR = "datasets"
CHECKPOINTS_DIR = "checkpoints"
REJECTED_DIR = "rejected"
STREAM_START = "0-0"
DEFAULT_STREAM = "mrdib:events"  # service.settings.Settings.stream
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
    """What survives between runs. Written only by `save_state`, atomically."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    stream: str
    last_id: str = STREAM_START
    dataset: str | None = Field(default=None, description="folder under retrain/datasets holding all merged events")
    events_consumed: int = 0
    runs: int = 0
    updated_at: datetime | None = None
    last_run: dict[str, Any] = Field(default_factory=dict)


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
            f"{path}: records position {state.last_id} of stream {state.stream!r}, but this run reads "
            f"{stream!r}; move the file away to start over from the stream's beginning"
        )
    if not _STREAM_ID_RE.match(state.last_id):
        raise RetrainError(f"{path}: last_id {state.last_id!r} is not a stream id like 1700000000000-0")
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
    """Events after a position, up to the stream's end when the read started."""

    events: list[tuple[str, StreamEvent]]  # (stream id, event)
    last_id: str  # position to store once these are merged (unchanged when there were none)
    malformed: int = 0
    lost_before_read: bool = False  # the stream was trimmed past our position: events were lost
    warnings: list[str] = field(default_factory=list)


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


def split_seed(last_id: str) -> int:
    """Seed of a run's split, derived from the position it ends at: re-running the same merge
    (after a crash before the state commit) reproduces the same dataset."""
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
    )
    return merged, report


def write_mmrec(ds: InteractionDataset, out: Path) -> Path:
    """Write `ds` as a complete MMRec folder (staged next to `out`, then renamed into place).

    Files: <name>.inter (userID itemID rating timestamp x_label), <modality>_feat.npy,
    i_id_mapping.csv and u_id_mapping.csv (org_id remap_id), so that training.data.mmrec.load_mmrec
    reads back exactly `ds`.
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
        for p in stage.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


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


def warm_start_state(new: dict[str, Any], old: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Initialise a fresh model's tensors from the previous model's.

    Same name and shape: copied. Same name, shape differing only in the first dimension (user
    embeddings after new users were appended; rows are append-only, so row r is the same user):
    the common leading rows are copied, the rest keep their fresh initialisation. Anything else
    keeps its fresh value. Returns the new state and counts {"copied", "partial", "fresh"}.
    """
    out = dict(new)
    counts = {"copied": 0, "partial": 0, "fresh": 0}
    for name, t in new.items():
        o = old.get(name)
        if o is None or getattr(o, "dtype", None) != t.dtype:
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


# ----------------------------------------------------------------------------------------------------
# The run


class RetrainSettings(BaseModel):
    """Every knob of a run (CLI options and environment variables end up here)."""

    model_config = ConfigDict(extra="forbid")

    artifacts: Path
    base: Path
    redis_url: str
    stream: str = DEFAULT_STREAM
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


@dataclass
class RunReport:
    status: str  # promoted | nothing-to-do | gate-failed
    exit_code: int
    details: dict[str, Any]

    def lines(self) -> list[str]:
        d = self.details
        out = [f"retrain: {self.status}"]
        if "events" in d:
            out.append(f"  events read: {d['events']} (malformed {d.get('malformed', 0)}), position {d.get('last_id')}")
        if "merge" in d:
            m = d["merge"]
            out.append(
                f"  merged: +{m['added']} interactions ({m['new_by_split']}), {m['new_users']} new users; skipped "
                f"{m['skipped_unknown_item']} unknown item, {m['skipped_duplicate']} duplicate, "
                f"{m['skipped_type']} type, {m['skipped_bad_id']} bad id"
            )
        if "gate" in d:
            g = d["gate"]
            cur = "none" if g["current"] is None else f"{g['current']:.4f}"
            out.append(
                f"  gate {g['metric']} (valid, {g['n_users']} users): candidate {g['candidate']:.4f}, "
                f"current {cur}, tolerance {g['tolerance']} -> {'PASS' if g['passed'] else 'FAIL'}"
            )
        if d.get("warm_start"):
            out.append(f"  {d['warm_start']}")
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
        cfg = load_config(None, {"backbone.name": settings.backbone, "mrdib.enabled": settings.mrdib})
    updates: dict[str, Any] = {"data": str(data), "out": str(out), "device": settings.device}
    if settings.epochs is not None:
        updates["epochs"] = settings.epochs
    return cfg.model_copy(update=updates)


def _warm_factory(previous: Path | None, log: list[str]):
    """A model factory that starts from the previous candidate's weights, when there are any."""
    if previous is None or not (previous / "model.safetensors").is_file():
        return None
    from safetensors.torch import load_file

    from training.trainer import default_model_factory

    def factory(cfg, ctx):
        model = default_model_factory(cfg, ctx)
        old = load_file(str(previous / "model.safetensors"))
        state, counts = warm_start_state(model.state_dict(), old)
        model.load_state_dict(state)
        log.append(f"warm start from {previous.name}: {counts}")
        return model

    return factory


def _publish(settings: RetrainSettings, checkpoint: Path, gate: GateResult) -> str:
    """Export the candidate with the real export pipeline (ONNX towers, FAISS indexes, verified
    manifest carrying the gate verdict). Promoted: into the artifacts root, which flips `current`.
    Rejected: into ROOT/retrain/rejected, so the served model stays and the candidate can be inspected."""
    from training.export import ExportError, export_checkpoint

    root = Path(settings.artifacts)
    target = root if gate.passed else retrain_dir(root) / REJECTED_DIR
    options: dict[str, Any] = {"quality_gate": gate.model_dump(mode="json"), "keep": settings.keep_versions}
    if settings.tower_epochs is not None:
        options["tower_epochs"] = settings.tower_epochs
    try:
        manifest = export_checkpoint(checkpoint, target, **options)
    except ExportError as e:
        raise RetrainError(f"export of candidate {checkpoint} failed: {e}") from None
    return manifest.model_version


def run_retrain(settings: RetrainSettings, client: Any | None = None) -> RunReport:
    """One retraining run (see the module docstring). Raises RetrainError / LockedError / DataError.

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
            import redis

            client = redis.Redis.from_url(settings.redis_url)
        batch = read_events(client, settings.stream, state.last_id)
        details: dict[str, Any] = {"events": len(batch.events), "malformed": batch.malformed,
                                   "last_id": batch.last_id, "warnings": list(batch.warnings)}
        if not batch.events and batch.malformed == 0 and current is not None and not settings.force:
            return RunReport("nothing-to-do", EXIT_OK, details)

        source = rdir / DATASETS_DIR / state.dataset if state.dataset else Path(settings.base)
        if not source.is_dir():
            raise RetrainError(f"{source}: dataset folder does not exist (base dataset or state.json's dataset)")
        ds = _load_dataset(source)
        merged, merge = merge_events(ds, [e for _, e in batch.events], split_seed(batch.last_id),
                                     settings.event_types or None)
        details["merge"] = merge.model_dump()
        new_state = state.model_copy(update={
            "last_id": batch.last_id, "events_consumed": state.events_consumed + len(batch.events),
            "runs": state.runs + 1, "updated_at": datetime.now(UTC)})  # fmt: skip
        if merge.added == 0 and current is not None and not settings.force:
            # Events were read but none became an interaction: move the position, keep the data.
            new_state.last_run = {"status": "nothing-to-do", **details}
            save_state(root, new_state)
            return RunReport("nothing-to-do", EXIT_OK, details)

        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{batch.last_id}"
        data_dir = source
        if merge.added:
            data_dir = write_mmrec(merged, rdir / DATASETS_DIR / run_id)
            merged = _load_dataset(data_dir)  # train on exactly what was written
        work = Path(settings.work) if settings.work else rdir / "work"
        ckpt_dir = work / f"candidate-{run_id}"
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        cfg = _train_config(settings, current, data_dir, ckpt_dir)
        from training.checkpoint import load_embeddings, read_json
        from training.trainer import train

        warm_log: list[str] = []
        previous = rdir / CHECKPOINTS_DIR / current.manifest.model_version if current is not None else None
        factory = _warm_factory(previous, warm_log) if settings.warm_start else None
        t0 = time.perf_counter()
        train(cfg, merged, ckpt_dir, progress=False, model_factory=factory)
        details["train_seconds"] = round(time.perf_counter() - t0, 1)
        if warm_log:
            details["warm_start"] = warm_log[-1]
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
        details["gate"] = gate.model_dump(mode="json")
        version = _publish(settings, ckpt_dir, gate)
        details["version" if passed else "rejected_version"] = version
        if passed:
            keep = rdir / CHECKPOINTS_DIR / version
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt_dir / "model.safetensors", keep / "model.safetensors")
        new_state.dataset = data_dir.name if data_dir != Path(settings.base) else state.dataset
        status = "promoted" if passed else "gate-failed"
        new_state.last_run = {"status": status, **details}
        save_state(root, new_state)
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


def retrain_command(
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", envvar="MRDIB_ARTIFACTS",
                                   help="Artifacts root (holds `current`, the versions and retrain/)."),
    base: Path = typer.Option(Path("/data/dataset"), "--base", envvar="MRDIB_DATASET",
                              help="Base MMRec dataset, used until a run has produced a merged one."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="REDIS_URL"),
    stream: str = typer.Option(DEFAULT_STREAM, "--stream", envvar="MRDIB_STREAM", help="Event stream key."),
    tolerance: float = typer.Option(0.01, "--tolerance", envvar="MRDIB_RETRAIN_TOLERANCE",
                                    help="Promote when candidate >= current - tolerance (absolute)."),
    metric: str = typer.Option("recall@20", "--metric", help="Validation metric of the gate."),
    event_types: str = typer.Option("", "--event-types", envvar="MRDIB_RETRAIN_EVENT_TYPES",
                                    help="Comma-separated event types to learn from (empty = all)."),
    backbone: str = typer.Option("freedom", "--backbone", envvar="MRDIB_BACKBONE",
                                 help="Backbone when no model is served yet (else the served model's config)."),
    mrdib: bool = typer.Option(True, "--mrdib/--no-mrdib", envvar="MRDIB_PLUGIN",
                               help="MRdIB plug-in when no model is served yet (env: 1/0)."),
    epochs: int | None = typer.Option(None, "--epochs", envvar="MRDIB_RETRAIN_EPOCHS",
                                      help="Maximum epochs (default: the served model's config)."),
    tower_epochs: int | None = typer.Option(None, "--tower-epochs", envvar="MRDIB_RETRAIN_TOWER_EPOCHS",
                                            help="Epochs of each export tower fit (default: export's)."),
    keep: int = typer.Option(5, "--keep", envvar="MRDIB_KEEP_VERSIONS", help="Published versions to keep."),
    work: Path | None = typer.Option(None, "--work", envvar="MRDIB_WORK",
                                     help="Scratch space for the candidate checkpoint (default ROOT/retrain/work)."),
    device: str = typer.Option("auto", "--device", envvar="MRDIB_DEVICE"),
    warm_start: bool = typer.Option(True, "--warm-start/--cold-start", help="Start from the served model's weights."),
    force: bool = typer.Option(False, "--force", help="Retrain even without new events."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Merge new events into the dataset, retrain, and promote the model if it passes the quality gate."""
    try:
        settings = RetrainSettings(
            artifacts=artifacts, base=base, redis_url=redis_url, stream=stream, tolerance=tolerance, metric=metric,
            event_types=[t.strip() for t in event_types.split(",") if t.strip()], backbone=backbone, mrdib=mrdib,
            epochs=epochs, tower_epochs=tower_epochs, keep_versions=keep, device=device, warm_start=warm_start,
            force=force, work=work,
        )  # fmt: skip
    except ValidationError as e:
        typer.echo(f"retrain: bad settings: {e}", err=True)
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
    except redis.exceptions.ConnectionError as e:
        typer.echo(f"retrain: Redis unreachable at {settings.redis_url}: {e}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if as_json:
        typer.echo(json.dumps({"status": report.status, **report.details}, indent=2, default=str))
    else:
        typer.echo("\n".join(report.lines()))
    raise typer.Exit(report.exit_code)
