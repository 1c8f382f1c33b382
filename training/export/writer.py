"""Checkpoint -> published artifact version (the one function the CLI calls).

    run_export(ExportOptions(checkpoint=..., out=...)) -> ExportResult
    export_checkpoint(checkpoint, root, **options) -> Manifest      (what training.retrain calls)

Steps: read the checkpoint (config, dataset reference, metrics, embeddings) and re-load its
dataset, refusing when the data's fingerprint differs from the one training recorded; write the
arrays, id maps and item display metadata into a staging directory under the artifacts root; fit, export and check the
two towers; build and measure the FAISS indexes; hand the staging directory to
``mrdib.artifact.store.publish`` (checksums, manifest, atomic rename, flip ``current``, prune).
A failure anywhere removes the staging directory and leaves ``current`` untouched.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrdib.artifact import schema as S
from mrdib.artifact import store
from mrdib.artifact.bounds import vector_problem
from mrdib.artifact.schema import Manifest
from mrdib.item_meta import ItemMetaError, write_item_meta
from training import checkpoint as ckpt
from training.data.dataset import TEST, TRAIN, InteractionDataset

# Export aborts when ONNX Runtime and torch disagree by more than this x max(1, largest |vector entry|):
# float32 rounding grows with the vectors' scale (FREEDOM's item norms are ~20). Tests demand 1e-5.
ONNX_TOLERANCE = 1e-4
ITEM_HOLDOUT_FRAC = 0.1  # share of trained items held out to measure the item tower before the final fit


class ExportError(ValueError):
    """The checkpoint or its data cannot be exported. The message names the file and the problem."""


class ExportOptions(BaseModel):
    """Everything `mrdib export` accepts (validated at the edge)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path
    out: Path
    data: Path | None = Field(default=None, description="dataset folder; default: the path in dataset.json")
    keep: int = Field(default=5, ge=1, description="published versions to keep (current is never pruned)")
    index_factory: str | None = Field(default=None, description="FAISS factory string; default by catalogue size")
    max_history: int = Field(default=50, ge=1, le=1000)
    quality_gate: dict | None = Field(default=None, description="gate verdict stored in the manifest (retraining)")
    side_items_merged: dict[str, datetime] | None = Field(
        default=None, description="admin side items the model was trained on (retraining): item id -> put time"
    )
    recall_k: int = Field(default=20, ge=1)
    tower_epochs: int = Field(default=60, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class CheckpointInputs:
    config: dict[str, Any]
    dataset: InteractionDataset
    metrics: dict[str, dict[str, float]]
    embeddings: ckpt.Embeddings


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    path: Path
    seconds: float


def _read_json(directory: Path, name: str) -> dict:
    p = Path(directory) / name
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{p}: missing (not a training checkpoint directory?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{p}: top level must be a JSON object")
    return data


def _numeric_metrics(raw: dict) -> dict[str, dict[str, float]]:
    """split -> metric -> value, keeping finite numbers only (metrics.json may hold epochs, times, ...)."""
    out: dict[str, dict[str, float]] = {}
    for split in ("valid", "test"):
        block = raw.get(split)
        if isinstance(block, dict):
            vals = {
                str(k): float(v)
                for k, v in block.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
            if vals:
                out[split] = vals
    return out


def read_checkpoint(directory: Path, data: Path | None = None) -> CheckpointInputs:
    """Read and cross-check a checkpoint directory (training/checkpoint.py layout)."""
    from training.config import TrainConfig
    from training.experiment import resolve_dataset

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: checkpoint directory does not exist")
    config = _read_json(directory, ckpt.CONFIG)
    try:
        TrainConfig.model_validate(config)
    except ValidationError as e:
        raise ExportError(f"{directory / ckpt.CONFIG}: not a valid training config: {e}") from None
    meta = _read_json(directory, ckpt.DATASET)
    metrics_raw = _read_json(directory, ckpt.METRICS)
    if data is not None:
        data_spec = str(data)
    else:
        if not isinstance(meta.get("path"), str):
            raise ExportError(f"{directory / ckpt.DATASET}: no dataset 'path' recorded (pass --data)")
        data_spec = meta["path"]
        rel = directory / data_spec
        if not data_spec.startswith("synth:") and not Path(data_spec).exists() and rel.exists():
            data_spec = str(rel)
    data_path = data_spec
    # A folder (MMRec / MovieLens layout) or `synth:<preset>`, resolved exactly as training did.
    ds = resolve_dataset(data_spec)
    want = meta.get("fingerprint")
    if want is not None and want != ds.fingerprint():
        raise ExportError(
            f"{data_path}: data fingerprint {ds.fingerprint()[:12]}... differs from the one training recorded in "
            f"{directory / ckpt.DATASET} ({str(want)[:12]}...): the dataset changed since training"
        )
    try:
        emb = ckpt.load_embeddings(directory)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ExportError(str(e)) from None
    epath = directory / ckpt.EMBEDDINGS
    if emb.user.shape[0] != ds.n_users or emb.item.shape[0] != ds.n_items:
        raise ExportError(
            f"{epath}: {emb.user.shape[0]} users x {emb.item.shape[0]} items, dataset {data_path} has "
            f"{ds.n_users} x {ds.n_items}"
        )
    if emb.user.ndim != 2 or emb.item.ndim != 2 or emb.user.shape[1] != emb.item.shape[1]:
        raise ExportError(f"{epath}: user {emb.user.shape} and item {emb.item.shape} vectors disagree on dimension")
    # The bound every reader applies (mrdib/artifact/bounds.py), checked before anything is staged: a diverged
    # run must fail here, not publish a version that `current` points to and every service then refuses.
    arrays = [("user vectors", emb.user), ("item vectors", emb.item)]
    arrays += [(f"component {name!r}", c) for name, c in emb.components.items()]
    for name, arr in arrays:
        problem = vector_problem(arr)
        if problem:
            raise ExportError(f"{epath}: {name} cannot be served: {problem}")
    return CheckpointInputs(config=config, dataset=ds, metrics=_numeric_metrics(metrics_raw), embeddings=emb)


def _finite(d: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if v is not None and math.isfinite(float(v))}


def write_arrays(staging: Path, ds: InteractionDataset, emb: ckpt.Embeddings) -> list[str]:
    """Write the array and id files of the schema; returns the component order."""
    np.save(staging / S.ITEM_VECTORS, np.ascontiguousarray(emb.item, np.float32))
    np.save(staging / S.USER_VECTORS, np.ascontiguousarray(emb.user, np.float32))
    components = list(emb.components)
    np.save(staging / S.ITEM_COMPONENTS, np.stack([emb.components[c] for c in components]).astype(np.float32))
    (staging / S.ITEM_IDS).write_text(json.dumps([str(x) for x in ds.item_ids]), encoding="utf-8")
    (staging / S.USER_IDS).write_text(json.dumps([str(x) for x in ds.user_ids]), encoding="utf-8")
    np.save(staging / S.ITEM_POPULARITY, ds.item_popularity().astype(np.int64))
    indptr, indices = ds.recent_first()  # most recent first: the service feeds these rows to the user tower
    np.savez(staging / S.TRAIN_CSR, indptr=indptr, indices=indices)
    return components


def write_meta(staging: Path, ds: InteractionDataset) -> list[str] | None:
    """Write the dataset's item display fields (item_meta.jsonl) when it has any; returns the field names
    for the manifest (`item_meta_fields`), None when the dataset carries no metadata."""
    if ds.item_meta is None:
        return None
    try:
        write_item_meta(staging / S.ITEM_META, [str(x) for x in ds.item_ids], ds.item_meta)
    except ItemMetaError as e:
        raise ExportError(f"item metadata of the dataset: {e}") from None
    return sorted({k for rec in ds.item_meta for k in rec})


def build_user_tower(
    staging: Path, ds: InteractionDataset, emb: ckpt.Embeddings, opts: ExportOptions
) -> dict[str, float]:
    """Fit, export and check the user tower; returns its tower_metrics entries."""
    from training.export.evaluate import recall_at_k
    from training.export.onnx_export import (
        check_user_tower,
        export_user_tower,
        onnx_user_vectors,
        random_history_batches,
    )
    from training.export.towers import TowerFitConfig, fit_user_tower, user_histories

    k = opts.recall_k
    t0 = time.perf_counter()
    hist = user_histories(ds, opts.max_history)
    tower = fit_user_tower(
        hist, emb.user, emb.item, opts.max_history, TowerFitConfig(epochs=opts.tower_epochs, seed=opts.seed)
    )
    fit_s = time.perf_counter() - t0
    path = export_user_tower(tower, staging / S.USER_TOWER)
    real = hist[:64]
    short = real[:, : min(5, opts.max_history)]
    batches = [*random_history_batches(ds.n_items, opts.max_history, opts.seed), real, short]
    diff = check_user_tower(tower, path, batches)
    tol = ONNX_TOLERANCE * max(1.0, float(np.abs(emb.user).max()))
    if diff > tol:
        raise ExportError(f"{path}: ONNX and torch user towers differ by {diff:.2e} (> {tol:.2e})")
    test, seen = ds.csr(TEST), ds.csr(TRAIN)  # the project's protocol: mask training items only
    learned = recall_at_k(emb.user, emb.item, test, seen, k)
    towered = recall_at_k(onnx_user_vectors(path, hist), emb.item, test, seen, k)  # the file the service runs
    return _finite(
        {
            f"user_tower_test_recall@{k}": towered,
            f"user_vectors_test_recall@{k}": learned,
            "user_tower_relative_recall": towered / learned if learned > 0 else math.nan,
            "user_tower_onnx_max_abs_diff": diff,
            "user_tower_fit_seconds": fit_s,
        }
    )


def build_item_tower(
    staging: Path, ds: InteractionDataset, emb: ckpt.Embeddings, opts: ExportOptions
) -> dict[str, float]:
    """Measure the item tower on held-out trained items, fit it on all trained items, export and check it.

    Held-out measurement: cosine(predicted, learned) and Recall@k among the held-out items of
    every user's interactions with them (any split), predicted vs learned item vectors.
    """
    import scipy.sparse as sp

    from training.export.evaluate import recall_at_k
    from training.export.onnx_export import check_item_tower, export_item_tower
    from training.export.towers import TowerFitConfig, fit_item_tower, item_tower_vectors

    k = opts.recall_k
    cfg = TowerFitConfig(epochs=opts.tower_epochs, seed=opts.seed)
    pop = ds.item_popularity()
    trained = np.flatnonzero(pop > 0)
    if len(trained) == 0:
        raise ExportError("no item has a training interaction: nothing to fit the item tower on")
    tu, ti = ds.split_pairs(TRAIN)
    metrics: dict[str, float] = {}
    rng = np.random.default_rng(opts.seed)
    n_hold = int(len(trained) * ITEM_HOLDOUT_FRAC)
    if n_hold >= 1:
        hold = np.zeros(ds.n_items, dtype=bool)
        hold[rng.choice(trained, n_hold, replace=False)] = True
        fit_rows = trained[~hold[trained]]
        keep = ~hold[ti]
        t = fit_item_tower(ds.features, emb.item, fit_rows, emb.user, (tu[keep], ti[keep]), cfg)
        pred = item_tower_vectors(t, ds.features, np.flatnonzero(hold))
        learned = emb.item[hold]
        norms = np.linalg.norm(pred, axis=1) * np.linalg.norm(learned, axis=1)
        cos = (pred * learned).sum(1) / np.maximum(norms, 1e-12)
        mask = hold[ds.items]
        targets = sp.csr_matrix(
            (np.ones(int(mask.sum()), np.float32), (ds.users[mask], ds.items[mask])), shape=(ds.n_users, ds.n_items)
        )
        targets.data[:] = 1.0
        v_pred = emb.item.copy()
        v_pred[hold] = pred
        metrics[f"item_tower_holdout_recall@{k}"] = recall_at_k(emb.user, v_pred, targets, None, k, candidates=hold)
        metrics[f"item_vectors_holdout_recall@{k}"] = recall_at_k(emb.user, emb.item, targets, None, k, candidates=hold)
        metrics["item_tower_holdout_cosine"] = float(cos.mean())
    t0 = time.perf_counter()
    tower = fit_item_tower(ds.features, emb.item, trained, emb.user, (tu, ti), cfg)
    metrics["item_tower_fit_seconds"] = time.perf_counter() - t0
    path = export_item_tower(tower, staging / S.ITEM_TOWER)
    gen = np.random.default_rng(opts.seed + 1)
    batches = [
        {m: x[:1] for m, x in ds.features.items()},
        {m: x[: min(257, ds.n_items)] for m, x in ds.features.items()},
        # random items at the features' own scale (mean + std * noise), as a cold item would look
        {m: (x.mean(0) + x.std(0) * gen.standard_normal((5, x.shape[1]))).astype(np.float32)
         for m, x in ds.features.items()},
    ]
    diff = check_item_tower(tower, path, batches)
    tol = ONNX_TOLERANCE * max(1.0, float(np.abs(emb.item).max()))
    if diff > tol:
        raise ExportError(f"{path}: ONNX and torch item towers differ by {diff:.2e} (> {tol:.2e})")
    metrics["item_tower_onnx_max_abs_diff"] = diff
    return _finite(metrics)


def export_checkpoint(checkpoint: Path, root: Path, **options: Any) -> Manifest:
    """Export `checkpoint` and publish it under the artifacts `root`; returns the new manifest.

    `options` are the other ExportOptions fields (data, keep, index_factory, max_history,
    quality_gate, ...). This is the entry point of `training.retrain`.
    """
    return run_export(ExportOptions(checkpoint=checkpoint, out=root, **options)).manifest


def run_export(opts: ExportOptions) -> ExportResult:
    """Turn a checkpoint into a published artifact version under `opts.out`. See the module docstring."""
    from training.export.index import build_indexes

    t0 = time.perf_counter()
    inp = read_checkpoint(opts.checkpoint, opts.data)
    ds, emb, cfg = inp.dataset, inp.embeddings, inp.config
    staging = store.staging_dir(opts.out)
    try:
        components = write_arrays(staging, ds, emb)
        meta_fields = write_meta(staging, ds)
        tower_metrics = build_user_tower(staging, ds, emb, opts)
        tower_metrics |= build_item_tower(staging, ds, emb, opts)
        try:
            built = build_indexes(
                emb.item, emb.user, staging, factory=opts.index_factory, k=opts.recall_k, seed=opts.seed
            )
        except ValueError as e:
            raise ExportError(str(e)) from None
        mrdib_cfg = cfg.get("mrdib") if isinstance(cfg.get("mrdib"), dict) else None
        fields = {
            "created_at": datetime.now(UTC),
            "backbone": str(cfg.get("backbone", {}).get("name", "unknown")),
            "mrdib": mrdib_cfg if (mrdib_cfg or {}).get("enabled", False) else None,
            "training_config": cfg,
            "modalities": [{"name": m, "dim": d} for m, d in ds.feature_dims.items()],
            "embedding_dim": int(emb.item.shape[1]),
            "n_users": ds.n_users,
            "n_items": ds.n_items,
            "n_train_interactions": int(ds.train_csr().nnz),
            "max_history": opts.max_history,
            "components": components,
            "metrics": inp.metrics,
            "tower_metrics": tower_metrics,
            "data_fingerprint": ds.fingerprint(),
            "indexes": {m: b.spec for m, b in built.items()},
            "quality_gate": opts.quality_gate,
            "side_items_merged": opts.side_items_merged,
            "item_meta_fields": meta_fields,
        }
        manifest = store.publish(staging, fields, opts.out, keep=opts.keep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(
        manifest=manifest, path=Path(opts.out) / manifest.model_version, seconds=time.perf_counter() - t0
    )
