"""Fixtures of the export tests: a tiny MMRec dataset folder and a checkpoint trained on it.

The checkpoint is built exactly in training/checkpoint.py's layout (config.json, dataset.json,
metrics.json, embeddings.safetensors) with a few epochs of BPR-MF, so the export tests do not
depend on the trainer's speed; one test also exports a checkpoint from the real trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training import checkpoint as ckpt
from training.config import TrainConfig

N_USERS, N_ITEMS, DIM = 60, 90, 16
MODALITIES = {"text": 12, "meta": 5}


def write_tiny_mmrec(folder: Path, seed: int = 0) -> Path:
    """A small MMRec folder whose interactions follow item features (so towers can learn something)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    latent = rng.standard_normal((N_ITEMS, 4)).astype(np.float32)
    for m, d in MODALITIES.items():
        proj = rng.standard_normal((4, d)).astype(np.float32)
        feat = latent @ proj + 0.1 * rng.standard_normal((N_ITEMS, d)).astype(np.float32)
        np.save(folder / f"{m}_feat.npy", feat.astype(np.float32))
    prefs = rng.standard_normal((N_USERS, 4))
    lines = ["userID\titemID\ttimestamp\tx_label"]
    for u in range(N_USERS):
        scores = latent @ prefs[u] + rng.gumbel(size=N_ITEMS)
        items = np.argsort(-scores)[: rng.integers(8, 16)]
        times = np.sort(rng.integers(1_000_000, 2_000_000, size=len(items)))
        labels = [0] * (len(items) - 2) + [1, 2]  # most recent two: valid, test
        for i, t, x in zip(items, times, labels, strict=True):
            lines.append(f"{u}\t{i}\t{t}\t{x}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tiny_checkpoint(directory: Path, data: Path, epochs: int = 30, seed: int = 0) -> Path:
    """A checkpoint of BPR-MF on `data` with two item components summing to the item vectors."""
    from training.data.mmrec import load_mmrec
    from training.export.bench import fit_bpr_mf

    ds = load_mmrec(data)
    directory.mkdir(parents=True, exist_ok=True)
    u, i = ds.split_pairs(0)
    U, V = fit_bpr_mf(ds.n_users, ds.n_items, u, i, dim=DIM, epochs=epochs, lr=2e-2, batch=256, seed=seed)
    collab = (0.7 * V).astype(np.float32)
    ckpt.save_embeddings(
        directory, ckpt.Embeddings(user=U, item=V, components={"collaborative": collab, "shared": V - collab})
    )
    cfg = TrainConfig.model_validate({"data": str(data), "backbone": {"name": "bpr", "embedding_dim": DIM}})
    ckpt.write_json(directory, ckpt.CONFIG, cfg.model_dump(mode="json"))
    ckpt.write_json(
        directory,
        ckpt.DATASET,
        {"path": str(data), "name": ds.name, "fingerprint": ds.fingerprint(), "n_users": ds.n_users,
         "n_items": ds.n_items, "modalities": ds.feature_dims},
    )
    ckpt.write_json(
        directory, ckpt.METRICS, {"best_epoch": epochs - 1, "valid": {"recall@20": 0.5}, "test": {"recall@20": 0.4}}
    )
    return directory


def rewrite_manifest(version_dir: Path, **changes: object) -> None:
    """Edit manifest.json in place (tests of the reader's refusals)."""
    p = version_dir / "manifest.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    data.update(changes)
    p.write_text(json.dumps(data), encoding="utf-8")
