"""Load, verify, hold and hot-swap the served model version.

A request reads `ModelStore.current` ONCE and uses that `ServingModel` to the end, so a swap
(one reference assignment) never mixes two versions inside one response. Loading and
verification (sha256 of every file, shapes, towers and indexes actually opened and dry-run)
run in a worker thread, off the event loop; a version that fails is refused, remembered,
logged and counted, and the old version keeps serving.

Admin item changes (PUT/DELETE /items) live in an overlay that survives swaps: the features of
put items are kept so that each new version re-embeds them with its own item tower; items the
new version's catalogue already contains are dropped from the overlay (retraining took them in).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from mrdib.artifact import schema as S
from mrdib.artifact.schema import ArtifactError, Manifest
from mrdib.artifact.store import LoadedArtifact, current_version, load_artifact
from service.index import VectorIndex, gpu_count
from service.metrics import Metrics
from service.settings import Settings
from service.towers import ItemTower, UserTower

log = structlog.get_logger("mrdib.service.model")


@dataclass(frozen=True)
class Overlay:
    """Admin changes as seen by one model version (immutable; replaced as a whole)."""

    side_ids: tuple[str, ...] = ()
    side_vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    hidden_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # deleted or replaced rows
    deleted: frozenset[str] = frozenset()

    def side_norm(self) -> np.ndarray:
        n = np.linalg.norm(self.side_vectors, axis=1, keepdims=True)
        return self.side_vectors / np.maximum(n, 1e-12)


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
    overlay: Overlay = field(default_factory=Overlay)

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

    def rows_of(self, ids: list[str]) -> tuple[list[int], list[str]]:
        """Catalogue rows of `ids` (order kept) and the ids that are not in the catalogue."""
        rows, unknown = [], []
        for i in ids:
            r = self.item_row.get(i)
            (unknown.append(i) if r is None else rows.append(r))
        return rows, unknown


def load_serving_model(path: Path, settings: Settings) -> ServingModel:
    """Verify and open one version directory completely (blocking; run it in a thread)."""
    art = load_artifact(path, verify=True)
    m = art.manifest
    use_gpu = settings.use_gpu
    user_tower = UserTower(art.file(S.USER_TOWER), m.embedding_dim, m.max_history, settings.ort_intra_threads, use_gpu)
    item_tower = ItemTower(art.file(S.ITEM_TOWER), {x.name: x.dim for x in m.modalities}, m.embedding_dim,
                           settings.ort_intra_threads, use_gpu)
    indexes = {}
    for key in ("ip", "cosine"):
        spec = m.indexes.get(key)
        if spec is None:
            raise ArtifactError(f"{path / S.MANIFEST}: no {key!r} index listed")
        indexes[key] = VectorIndex(art.file(spec.file), art.item_vectors, spec.metric, spec.search_params, use_gpu)
    if not np.allclose(art.item_components.sum(axis=0), art.item_vectors, atol=1e-3):
        raise ArtifactError(f"{art.file(S.ITEM_COMPONENTS)}: components do not sum to item_vectors")
    popular = np.argsort(-art.item_popularity, kind="stable").astype(np.int64)
    return ServingModel(
        artifact=art, user_tower=user_tower, item_tower=item_tower, ip=indexes["ip"], cos=indexes["cosine"],
        item_row={i: r for r, i in enumerate(art.item_ids)}, user_row={u: r for r, u in enumerate(art.user_ids)},
        popular_rows=popular,
    )


@dataclass(frozen=True)
class ReloadResult:
    status: str  # "loaded" | "unchanged" | "refused" | "empty"
    model_version: str | None
    candidate: str | None = None
    error: str | None = None


class ModelStore:
    """The served model reference, its loader, poller and the admin overlay."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.current: ServingModel | None = None
        self.refused: dict[str, str] = {}
        self._load_lock = asyncio.Lock()
        self._overlay_lock = asyncio.Lock()
        self._side_features: dict[str, dict[str, np.ndarray]] = {}  # item id -> modality -> features
        self._deleted: set[str] = set()

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
                model.overlay = await asyncio.to_thread(self._build_overlay, model)
                self.current = model  # the swap: one reference assignment
            self.refused.pop(candidate, None)
            self.metrics.reloads.labels(result="loaded").inc()
            self.metrics.set_model(model.version, {"ip": model.ip.size, "cosine": model.cos.size,
                                                   "side": len(model.overlay.side_ids)})
            log.info("model_loaded", model_version=model.version, previous=served, providers=model.providers,
                     faiss_device=model.faiss_device, n_items=model.manifest.n_items)
            return ReloadResult("loaded", model.version, candidate)

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

    def _build_overlay(self, model: ServingModel) -> Overlay:
        """Overlay of the admin changes for `model`; blocking (runs the item tower)."""
        for item_id in [i for i in self._side_features if i in model.item_row and model is not self.current]:
            # A newly loaded version that contains the item was retrained with it: drop the override.
            self._side_features.pop(item_id, None)
        ids = tuple(sorted(self._side_features))
        vecs = (np.stack([model.item_tower.embed(self._side_features[i]) for i in ids])
                if ids else np.empty((0, model.manifest.embedding_dim), np.float32))
        hidden = {model.item_row[i] for i in (*ids, *self._deleted) if i in model.item_row}
        return Overlay(ids, vecs.astype(np.float32), np.array(sorted(hidden), dtype=np.int64), frozenset(self._deleted))

    async def put_item(self, item_id: str, features: dict[str, np.ndarray]) -> ServingModel:
        """Make `item_id` searchable with vectors from the item tower (new or changed item)."""
        async with self._overlay_lock:
            model = self._require()
            old = dict(self._side_features), set(self._deleted)
            self._side_features[item_id] = features
            self._deleted.discard(item_id)
            try:
                overlay = await asyncio.to_thread(self._build_overlay, model)
            except Exception:
                self._side_features, self._deleted = old
                raise
            model.overlay = overlay
            self.metrics.index_size.labels(index="side").set(len(overlay.side_ids))
            return model

    async def delete_item(self, item_id: str) -> tuple[ServingModel, bool]:
        """Hide `item_id` from every result. Returns (model, whether the id was known)."""
        async with self._overlay_lock:
            model = self._require()
            known = item_id in model.item_row or item_id in self._side_features
            self._side_features.pop(item_id, None)
            self._deleted.add(item_id)
            model.overlay = await asyncio.to_thread(self._build_overlay, model)
            self.metrics.index_size.labels(index="side").set(len(model.overlay.side_ids))
            return model, known

    def _require(self) -> ServingModel:
        if self.current is None:
            raise NoModelError("no model loaded yet")
        return self.current


class NoModelError(RuntimeError):
    """No version is loaded (nothing published, or every published one was refused)."""


async def cancel_quietly(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
