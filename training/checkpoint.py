"""Checkpoint directory: what training leaves behind and export reads.

    DIR/
      config.json              the TrainConfig used (model_dump)
      dataset.json             {"path", "name", "fingerprint", "n_users", "n_items", "modalities": {name: dim}}
      metrics.json             best-validation epoch: {"best_epoch", "valid": {...}, "test": {...}, ...}
      model.safetensors        state dict of the best-validation model (resume / fine-tune)
      embeddings.safetensors   "user" [U, d], "item" [I, d], "component.<name>" [I, d] (sum = item)

Safe formats only: safetensors for tensors, JSON for the rest; nothing here is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDINGS = "embeddings.safetensors"
MODEL = "model.safetensors"
CONFIG = "config.json"
DATASET = "dataset.json"
METRICS = "metrics.json"


@dataclass(frozen=True)
class Embeddings:
    user: np.ndarray  # float32 [U, d]
    item: np.ndarray  # float32 [I, d]
    components: dict[str, np.ndarray]  # name -> float32 [I, d]; insertion order is the export order


def save_embeddings(directory: Path, emb: Embeddings) -> Path:
    from safetensors.numpy import save_file

    tensors = {"user": np.ascontiguousarray(emb.user, np.float32), "item": np.ascontiguousarray(emb.item, np.float32)}
    for name, c in emb.components.items():
        tensors[f"component.{name}"] = np.ascontiguousarray(c, np.float32)
    order = json.dumps(list(emb.components))
    path = Path(directory) / EMBEDDINGS
    save_file(tensors, str(path), metadata={"component_order": order})
    return path


def load_embeddings(directory: Path) -> Embeddings:
    from safetensors import safe_open

    path = Path(directory) / EMBEDDINGS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no embeddings in this checkpoint")
    with safe_open(str(path), framework="numpy") as f:
        order = json.loads((f.metadata() or {}).get("component_order", "[]"))
        user, item = f.get_tensor("user"), f.get_tensor("item")
        comps = {name: f.get_tensor(f"component.{name}") for name in order}
    if not comps:
        comps = {"collaborative": item.copy()}
    total = sum(comps.values())
    if not np.allclose(total, item, atol=1e-4):
        raise ValueError(f"{path}: components do not sum to the item vectors")
    return Embeddings(user=user, item=item, components=comps)


def write_json(directory: Path, name: str, data: dict) -> None:
    (Path(directory) / name).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def read_json(directory: Path, name: str) -> dict:
    return json.loads((Path(directory) / name).read_text(encoding="utf-8"))
