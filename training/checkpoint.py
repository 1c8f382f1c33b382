"""Checkpoint directory: what training leaves behind and export reads.

    DIR/
      config.json              the TrainConfig used (model_dump)
      dataset.json             {"path", "name", "fingerprint", "n_users", "n_items", "modalities": {name: dim}}
      metrics.json             best-validation epoch: {"best_epoch", "valid": {...}, "test": {...}, ...}
      model.safetensors        state dict of the best-validation model (resume / fine-tune)
      embeddings.safetensors   "user" [U, d], "item" [I, d], "component.<name>" [I, d] (sum = item)
      metrics.jsonl            one JSON line per epoch: loss terms, validation metrics, seconds
      test_per_user.npz        TEST metrics per evaluated user at the best epoch ("users" + one array per
                               metric), for paired per-user comparisons between runs
      curves.png               loss and validation curves
      resume/                  last finished epoch, for `mrdib train --resume DIR`:
        model.safetensors        state dict after that epoch (not the best one)
        optimizer.safetensors    every optimiser's state, flattened (see save_optimizers)
        state.json               {"epoch", "best_epoch", "best_valid", "bad_epochs", ...}

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
HISTORY = "metrics.jsonl"
CURVES = "curves.png"
RESUME = "resume"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
PER_USER = "test_per_user.npz"


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


def save_per_user(directory: Path, per_user: dict[str, np.ndarray]) -> Path:
    """Write per-user test metrics ("users" int64 rows + float arrays aligned with it) as an .npz."""
    path = Path(directory) / PER_USER
    names = {k.replace("@", "_at_"): np.asarray(v) for k, v in per_user.items()}  # npz keys are file names
    np.savez(path, **names)
    return path


def load_per_user(directory: Path) -> dict[str, np.ndarray]:
    """Read `save_per_user`'s file back (metric names with "@"); never unpickles."""
    with np.load(Path(directory) / PER_USER, allow_pickle=False) as z:
        return {k.replace("_at_", "@"): z[k] for k in z.files}


def write_json(directory: Path, name: str, data: dict) -> None:
    (Path(directory) / name).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")


def read_json(directory: Path, name: str) -> dict:
    return json.loads((Path(directory) / name).read_text(encoding="utf-8"))


# --- model and optimiser state (additive: used by the trainer for best-model and resume files) ---


def save_state_dict(path: Path, state: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write a torch state dict as safetensors.

    Sparse tensors (graph adjacencies some backbones keep as buffers) cannot be stored in
    safetensors; they are derived from the data, so they are skipped and their names recorded
    in the metadata, which `load_state_dict` uses to tell "skipped on purpose" from "missing".
    Tensors are cloned so that tied/shared storages do not trip safetensors' aliasing check.
    """
    import torch
    from safetensors.torch import save_file

    tensors, skipped = {}, []
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.layout != torch.strided:
            skipped.append(k)
            continue
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    meta = {"skipped": json.dumps(skipped), **(metadata or {})}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated checkpoint
    return path


def load_state_dict(path: Path, module, device=None) -> None:
    """Load a safetensors state dict written by `save_state_dict` into `module` (strict by name)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model state in this checkpoint")
    with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
        skipped = set(json.loads((f.metadata() or {}).get("skipped", "[]")))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(f"{path}: state does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def save_optimizers(path: Path, optimizers: dict) -> Path:
    """Flatten several optimisers' state dicts into one safetensors file.

    Tensor entries become "<name>.state.<param index>.<key>"; everything that is not a tensor
    (param_groups with lr/betas/..., scalar state) goes to the JSON metadata. No pickle involved.
    """
    import torch
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, object]] = {}
        for idx, st in sd["state"].items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"{name}.state.{idx}.{key}"] = val.detach().to("cpu").contiguous().clone()
                else:
                    scalars.setdefault(str(idx), {})[key] = val
        meta[name] = json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_optimizers(path: Path, optimizers: dict) -> None:
    """Restore optimisers saved by `save_optimizers` (same names, same parameter order)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no optimiser state in this checkpoint")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        flat = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for name, opt in optimizers.items():
        if name not in meta:
            raise ValueError(f"{path}: no state for optimiser {name!r} (has {sorted(meta)})")
        info = json.loads(meta[name])
        state: dict[int, dict[str, object]] = {}
        prefix = f"{name}.state."
        for k, v in flat.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix) :].split(".", 1)
                state.setdefault(int(idx), {})[key] = v
        for idx, sc in info["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        # JSON turned tuples (Adam's betas) into lists; give them back their type.
        groups = [
            {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
            for g in info["param_groups"]
        ]
        opt.load_state_dict({"state": state, "param_groups": groups})
