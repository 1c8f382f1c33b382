"""Load, verify, hold and hot-swap the served model version.

A request reads `ModelStore.current` ONCE and uses that `ServingModel` to the end, so a swap
(one reference assignment) never mixes two versions inside one response. Loading and
verification (sha256 of every file, shapes, towers and indexes actually opened and dry-run)
run in a worker thread, off the event loop; a version that fails is refused, remembered,
logged and counted, and the old version keeps serving.

Admin item changes (PUT/DELETE /items) come from an `ItemChangeLog` (items.py: Redis, shared by
every worker, or in-process) and are applied as an overlay that survives swaps: the features of put
items are kept so that each version embeds them with its own item tower (cached per version). A put
item that a version's catalogue contains and that was put before that version was created is left
to the catalogue (retraining took it in); one put after it overrides the catalogue row.

The item tower and overlay rebuilds are CPU work of the request path: they run in the app's bounded
pool (`MRDIB_CPU_THREADS`, the threads whose onnxruntime/faiss thread counts are set), not in asyncio's
default pool. Loading a version (reading and hashing files, seconds) stays in asyncio's default pool, so
that it never occupies a thread that requests wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import structlog

from mrdib.artifact import schema as S
from mrdib.artifact.bounds import vector_problem
from mrdib.artifact.schema import ArtifactError, Manifest
from mrdib.artifact.store import LoadedArtifact, current_version, load_artifact
from mrdib.item_meta import MetaRecord
from service import heap
from service.index import VectorIndex, gpu_count
from service.items import ItemChangeLog, ItemChanges, LocalItemLog
from service.metrics import Metrics
from service.settings import Settings
from service.towers import ItemTower, UserTower

log = structlog.get_logger("mrdib.service.model")
T = TypeVar("T")


@dataclass(frozen=True)
class Overlay:
    """Admin changes as seen by one model version (immutable; replaced as a whole, so a request that read
    `model.overlay` once sees one consistent set of changes). Everything a request needs is precomputed here,
    once per change, instead of once per request."""

    side_ids: tuple[str, ...] = ()
    side_vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    hidden_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # deleted or replaced rows
    deleted: frozenset[str] = frozenset()
    side_unit: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))  # L2-normalised rows
    side_pos: dict[str, int] = field(default_factory=dict)  # side id -> row of side_vectors
    side_meta: dict[str, MetaRecord] = field(default_factory=dict)  # display fields a PUT carried, by id
    meta_fields: frozenset[str] = frozenset()  # display fields any item has: the version's and the PUTs'

    @staticmethod
    def build(side_ids: tuple[str, ...], side_vectors: np.ndarray, hidden_rows: np.ndarray,
              deleted: frozenset[str], side_meta: dict[str, MetaRecord] | None = None,
              base_fields: frozenset[str] = frozenset()) -> Overlay:
        unit = side_vectors / np.maximum(np.linalg.norm(side_vectors, axis=1, keepdims=True), 1e-12)
        side_meta = side_meta or {}
        fields = base_fields.union(*(rec.keys() for rec in side_meta.values()))
        return Overlay(side_ids, side_vectors, hidden_rows, deleted, unit.astype(np.float32),
                       {i: n for n, i in enumerate(side_ids)}, side_meta, frozenset(fields))

    def side_norm(self) -> np.ndarray:
        return self.side_unit


def version_holds(manifest: Manifest, item_id: str, put_at: datetime) -> bool:
    """Was the side-index record of `item_id` PUT at `put_at` trained into this version?

    A retrained version names the records it merged (``side_items_merged``, id -> put time): only those
    records, or older ones, are superseded by the catalogue row; a re-PUT while the run trained stays
    served from the side index. A version without that list (a plain ``mrdib export``) falls back to
    its creation time: a record PUT before it is taken as trained in.
    """
    merged = manifest.side_items_merged
    if merged is None:
        return put_at < manifest.created_at
    return item_id in merged and put_at <= merged[item_id]


class UnservableItemVector(ValueError):
    """The item tower turned the features of a PUT into a vector that cannot be served (NaN, infinity, or a norm
    beyond `mrdib.artifact.bounds.MAX_VECTOR_NORM`): the check every loaded vector passes."""


@dataclass
class ServingModel:
    """Everything one version needs to answer requests. Only `overlay` is ever reassigned."""

    artifact: LoadedArtifact
    user_tower: UserTower
    item_tower: ItemTower
    ip: VectorIndex
    cos: VectorIndex
    item_row: dict[str, int]
    user_row: dict[str, int]
    popular_rows: np.ndarray
    popular_share: np.ndarray  # per item row: its share of all training interactions (the popular fallback's score)
    overlay: Overlay = field(default_factory=Overlay)
    # (item id, put time) -> this version's embedding of a side item: a change re-embeds only what changed.
    side_cache: dict[tuple[str, object], np.ndarray] = field(default_factory=dict)

    @property
    def manifest(self) -> Manifest:
        return self.artifact.manifest

    @property
    def version(self) -> str:
        return self.artifact.manifest.model_version

    @property
    def providers(self) -> list[str]:
        return self.user_tower.providers

    @property
    def faiss_device(self) -> str:
        return self.ip.device

    def modality_dims(self) -> dict[str, int]:
        return {m.name: m.dim for m in self.manifest.modalities}

    def meta_fields(self) -> frozenset[str]:
        """Display fields of this version's catalogue (what `fields` may name, with those of PUT items)."""
        return frozenset(self.manifest.item_meta_fields or ())

    def item_meta(self, overlay: Overlay, item_id: str) -> MetaRecord:
        """Display fields of one item as `overlay` sees it: those its PUT carried, else the catalogue's, else {}."""
        side = overlay.side_meta.get(item_id)
        if side is not None:
            return side
        records = self.artifact.item_meta
        row = self.item_row.get(item_id) if records is not None else None
        return records[row] if row is not None else {}

    def rows_of(self, ids: list[str]) -> tuple[list[int], list[str]]:
        """Catalogue rows of `ids` (order kept) and the ids that are not in the catalogue."""
        rows, unknown = [], []
        for i in ids:
            r = self.item_row.get(i)
            (unknown.append(i) if r is None else rows.append(r))
        return rows, unknown


def load_serving_model(path: Path, settings: Settings) -> ServingModel:
    """Verify and open one version directory completely (blocking; run it in a thread). `load_artifact` checks
    checksums, shapes, finite vectors and that the components add up to the item vectors."""
    art = load_artifact(path, verify=True)
    m = art.manifest
    use_gpu = settings.use_gpu
    user_tower = UserTower(art.file(S.USER_TOWER), m.embedding_dim, m.max_history, settings.ort_intra_threads, use_gpu)
    item_tower = ItemTower(art.file(S.ITEM_TOWER), {x.name: x.dim for x in m.modalities}, m.embedding_dim,
                           settings.ort_intra_threads, use_gpu)
    indexes = {}
    for key in ("ip", "cosine"):
        if key not in m.indexes:
            raise ArtifactError(f"{path / S.MANIFEST}: no {key!r} index listed")
        indexes[key] = VectorIndex.load(art.path, key, m, art.item_vectors, use_gpu)
    popular = np.argsort(-art.item_popularity, kind="stable").astype(np.int64)
    share = art.item_popularity / max(1, int(art.item_popularity.sum()))
    return ServingModel(
        artifact=art, user_tower=user_tower, item_tower=item_tower, ip=indexes["ip"], cos=indexes["cosine"],
        item_row={i: r for r, i in enumerate(art.item_ids)}, user_row={u: r for r, u in enumerate(art.user_ids)},
        popular_rows=popular, popular_share=share,
    )


@dataclass(frozen=True)
class ItemChangeResult:
    """What an admin item change did: the version it was applied to, whether the id was known, and whether it
    waits in the local item WAL for Redis (applied by this host's workers, not yet by the others)."""

    model: ServingModel
    known: bool
    pending_sync: bool


@dataclass(frozen=True)
class ReloadResult:
    status: str  # "loaded" | "unchanged" | "refused" | "empty"
    model_version: str | None
    candidate: str | None = None
    error: str | None = None


class ModelStore:
    """The served model reference, its loader, poller and the admin overlay."""

    def __init__(self, settings: Settings, metrics: Metrics, item_log: ItemChangeLog | None = None,
                 pool: Executor | None = None):
        self.settings = settings
        self.metrics = metrics
        self.pool = pool  # the app's bounded CPU pool; None = asyncio's default one (tests of this class alone)
        self.current: ServingModel | None = None
        self.refused: dict[str, str] = {}
        self._load_lock = asyncio.Lock()
        self._overlay_lock = asyncio.Lock()
        self.item_log = item_log or LocalItemLog()
        self.changes = ItemChanges()  # the snapshot the served overlay was built from

    @property
    def root(self) -> Path:
        return Path(self.settings.artifacts)

    def gpu_count(self) -> int:
        return gpu_count()

    async def refresh(self, force: bool = False) -> ReloadResult:
        """Load `current` if it names a version other than the served one.

        `force` retries a version refused before (an operator may have repaired it).
        """
        async with self._load_lock:
            served = self.current.version if self.current else None
            try:
                candidate = await asyncio.to_thread(current_version, self.root)
            except ArtifactError as e:
                return self._refuse(None, str(e), served)
            if candidate is None:
                return ReloadResult("empty", served)
            if candidate == served:
                return ReloadResult("unchanged", served, candidate)
            if candidate in self.refused and not force:
                return ReloadResult("refused", served, candidate, self.refused[candidate])
            try:
                model = await asyncio.to_thread(load_serving_model, self.root / candidate, self.settings)
            except (ArtifactError, OSError, ValueError) as e:
                return self._refuse(candidate, str(e), served)
            async with self._overlay_lock:
                model.overlay = await self._cpu(self._build_overlay, model, self.changes)
                self.current = model  # the swap: one reference assignment
            self.refused.pop(candidate, None)
            self.metrics.reloads.labels(result="loaded").inc()
            self.metrics.set_model(model.version, {"ip": model.ip.size, "cosine": model.cos.size,
                                                   "side": len(model.overlay.side_ids)})
            log.info("model_loaded", model_version=model.version, previous=served, providers=model.providers,
                     faiss_device=model.faiss_device, n_items=model.manifest.n_items)
            loaded = ReloadResult("loaded", model.version, candidate)
            if self.settings.gc_freeze:
                heap.settle()
            return loaded

    def _refuse(self, candidate: str | None, error: str, served: str | None) -> ReloadResult:
        if candidate is not None:
            self.refused[candidate] = error
        self.metrics.reloads.labels(result="refused").inc()
        log.error("model_refused", candidate=candidate, error=error, serving=served)
        return ReloadResult("refused", served, candidate, error)

    async def poll_forever(self) -> None:
        """Follow the `current` pointer every `poll_interval_s` seconds (cancelled on shutdown)."""
        interval = self.settings.poll_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # the poller must survive anything; the error is logged
                log.exception("model_poll_failed")

    # --- admin overlay -------------------------------------------------------------------------

    @staticmethod
    def _build_overlay(model: ServingModel, changes: ItemChanges) -> Overlay:
        """Overlay of `changes` for `model`; blocking (runs the item tower for side items not embedded yet)."""
        ids, vecs, cache, metas = [], [], {}, {}
        for item_id in sorted(changes.side):
            item = changes.side[item_id]
            if item_id in model.item_row and version_holds(model.manifest, item_id, item.put_at):
                continue  # retraining took this very record in: the catalogue row serves it
            key = (item_id, item.put_at)
            vec = model.side_cache.get(key)
            if vec is None:
                vec = model.item_tower.embed(item.features)
            if vector_problem(vec) is not None:
                continue  # checked at PUT time with the then-current tower; another version's may still overflow
            cache[key] = vec
            ids.append(item_id)
            vecs.append(vec)
            if item.meta is not None:
                metas[item_id] = item.meta
        model.side_cache.clear()
        model.side_cache.update(cache)
        side = (np.stack(vecs).astype(np.float32) if vecs
                else np.empty((0, model.manifest.embedding_dim), np.float32))
        hidden = {model.item_row[i] for i in (*ids, *changes.deleted) if i in model.item_row}
        return Overlay.build(tuple(ids), side, np.array(sorted(hidden), dtype=np.int64), frozenset(changes.deleted),
                             metas, model.meta_fields())

    async def _cpu(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking CPU work (item tower, overlay build) in the app's bounded pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _apply(self, model: ServingModel, changes: ItemChanges) -> None:
        """Swap in the overlay of `changes` (caller holds the overlay lock)."""
        model.overlay = await self._cpu(self._build_overlay, model, changes)
        self.changes = changes
        self.metrics.index_size.labels(index="side").set(len(model.overlay.side_ids))

    async def put_item(self, item_id: str, features: dict[str, np.ndarray], meta: MetaRecord | None = None
                       ) -> ItemChangeResult:
        """Make `item_id` searchable with vectors from the item tower (new or changed item), with its display
        fields `meta` (None: keep the catalogue's, if any).

        Raises UnservableItemVector (nothing recorded) when the tower's output fails the check every loaded vector
        passes, and items.ItemLogUnavailable when neither Redis nor the local item WAL could record the change."""
        async with self._overlay_lock:
            model = self._require()
            vec = await self._cpu(model.item_tower.embed, features)
            problem = vector_problem(vec)
            if problem:
                raise UnservableItemVector(f"the item tower of model {model.version} turned these features into a "
                                           f"vector that cannot be served ({problem}); "
                                           "the item was not indexed (features far outside the training range?)")
            changes = await self.item_log.put(item_id, features, meta)
            await self._apply(model, changes)
            return ItemChangeResult(model, True, changes.pending > 0)

    async def delete_item(self, item_id: str) -> ItemChangeResult:
        """Hide `item_id` from every result (`known`: whether the id was a catalogue or side item)."""
        async with self._overlay_lock:
            model = self._require()
            changes, was_side = await self.item_log.delete(item_id)
            await self._apply(model, changes)
            return ItemChangeResult(model, was_side or item_id in model.item_row, changes.pending > 0)

    async def sync_items(self) -> bool:
        """Apply item changes other workers made (True when something changed). One cheap GET when nothing did."""
        changes = await self.item_log.newer_than(self.changes)
        if changes is None:
            return False
        async with self._overlay_lock:
            # Re-read under the lock: a PUT of this worker may have applied a newer snapshot meanwhile.
            changes = await self.item_log.newer_than(self.changes)
            if changes is None:
                return False
            model = self.current
            if model is None:
                self.changes = changes
            else:
                await self._apply(model, changes)
        log.info("item_changes_applied", version=changes.version, side=len(changes.side),
                 deleted=len(changes.deleted), pending=changes.pending)
        return True

    async def sync_items_forever(self, interval: float, on_error: Callable[[BaseException], None]) -> None:
        """Poll the shared change log every `interval` seconds (cancelled on shutdown); errors go to `on_error`."""
        while True:
            try:
                await self.sync_items()
            except Exception as e:  # the poller must survive anything (Redis down, a bad record)
                on_error(e)
            await asyncio.sleep(interval)

    def _require(self) -> ServingModel:
        if self.current is None:
            raise NoModelError("no model loaded yet")
        return self.current


class NoModelError(RuntimeError):
    """No version is loaded (nothing published, or every published one was refused)."""


class ModelRequired(RuntimeError):
    """`require_model` is set and no valid model could be loaded at start: the service must not start."""


def no_model_reason(root: Path, result: ReloadResult) -> str:
    """Why nothing could be served from `root`, for the operator (the refusal's message names the file)."""
    if result.status == "empty":
        return f"no model published under {root} (no `current` pointer: run `mrdib export --out {root}`)"
    return f"the model under {root} was refused: {result.error or result.status}"


def check_loadable(settings: Settings) -> None:
    """Load what `current` points to exactly as the service would, then drop it; raises ModelRequired saying
    why it cannot be served. What `mrdib serve --require-model --workers N` runs before starting the workers
    (each worker checks again itself, but a failing worker makes uvicorn's supervisor stop with exit status 0)."""
    root = Path(settings.artifacts)
    try:
        version = current_version(root)
        if version is None:
            raise ModelRequired(no_model_reason(root, ReloadResult("empty", None)))
        load_serving_model(root / version, settings)
    except (ArtifactError, OSError, ValueError) as e:
        raise ModelRequired(no_model_reason(root, ReloadResult("refused", None, None, str(e)))) from None


async def cancel_quietly(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
