"""Export the towers to ONNX and prove the files compute what the torch modules compute.

Exporter choice (pinned): the TorchScript-based exporter (``dynamo=False``), opset 17.
On torch 2.13 both exporters produce correct graphs for these towers (max abs diff ~1e-7 on
random inputs with dynamic batch and history length), but the dynamo exporter takes 5-15 s
per tower (torch.export tracing + decompositions + optimiser) against well under a second,
prints progress to stdout, and rejects the item tower's per-modality varargs without a nested
``dynamic_shapes`` spec. The towers contain no control flow, so nothing is lost. Its
deprecation warning is silenced here and only here. Opset 17 is served by every onnxruntime
>= 1.14 (CPU and CUDA execution providers).

Graph contracts (checked by ``check_user_tower`` / ``check_item_tower``):

- ``user_tower.onnx``: input ``history`` int64 [batch, length] (item rows, most recent first,
  padded with -1, 1 <= length <= max_history) -> output ``user_vector`` float32 [batch, d].
- ``item_tower.onnx``: one input per modality, named by the modality, float32 [batch, d_m] ->
  output ``item_vector`` float32 [batch, d].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from training.export.towers import PAD, ItemTower, UserTower

OPSET = 17
USER_INPUT, USER_OUTPUT = "history", "user_vector"
ITEM_OUTPUT = "item_vector"


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], output: str, axes: dict) -> Path:
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def export_user_tower(tower: UserTower, path: Path) -> Path:
    """Write the user tower (frozen item vectors inside as a constant) to `path`."""
    example = torch.full((2, min(3, tower.max_history)), PAD, dtype=torch.long)
    example[:, 0] = 0
    axes = {USER_INPUT: {0: "batch", 1: "length"}, USER_OUTPUT: {0: "batch"}}
    return _export(tower.eval(), (example,), path, [USER_INPUT], USER_OUTPUT, axes)


def export_item_tower(tower: ItemTower, path: Path) -> Path:
    """Write the item tower to `path`; one input per modality, named by the modality."""
    example = tuple(torch.zeros(2, int(getattr(tower, f"mean_{k}").shape[0])) for k in range(len(tower.modalities)))
    axes = {m: {0: "batch"} for m in tower.modalities} | {ITEM_OUTPUT: {0: "batch"}}
    return _export(tower.eval(), example, path, list(tower.modalities), ITEM_OUTPUT, axes)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_user_tower(tower: UserTower, path: Path, histories: list[np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime and torch over each int64 [b, L] history batch."""
    sess = _session(path)
    worst = 0.0
    for h in histories:
        h = np.ascontiguousarray(h, dtype=np.int64)
        got = sess.run([USER_OUTPUT], {USER_INPUT: h})[0]
        want = tower.eval()(torch.as_tensor(h)).numpy()
        if got.shape != want.shape:
            raise AssertionError(f"{path}: output shape {got.shape}, torch gives {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()) if got.size else 0.0)
    return worst


def onnx_user_vectors(path: Path, histories: np.ndarray, batch: int = 4096) -> np.ndarray:
    """User vectors from the exported ONNX file itself (float32 [n, d]): the export's recorded tower figure
    is then the figure of the file the service runs, not of its torch twin."""
    sess = _session(path)
    h = np.ascontiguousarray(histories, dtype=np.int64)
    return np.concatenate([sess.run([USER_OUTPUT], {USER_INPUT: h[s : s + batch]})[0] for s in range(0, len(h), batch)])


@torch.no_grad()
def check_item_tower(tower: ItemTower, path: Path, batches: list[dict[str, np.ndarray]]) -> float:
    """Max abs difference between ONNX Runtime and torch over each {modality: float32 [b, d_m]} batch."""
    sess = _session(path)
    worst = 0.0
    for feats in batches:
        feed = {m: np.ascontiguousarray(feats[m], dtype=np.float32) for m in tower.modalities}
        got = sess.run([ITEM_OUTPUT], feed)[0]
        want = tower.eval()(*(torch.as_tensor(feed[m]) for m in tower.modalities)).numpy()
        if got.shape != want.shape:
            raise AssertionError(f"{path}: output shape {got.shape}, torch gives {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()) if got.size else 0.0)
    return worst


def random_history_batches(n_items: int, max_history: int, seed: int = 0) -> list[np.ndarray]:
    """History batches of varied batch size and length, with padding, out-of-range rows and empty rows."""
    rng = np.random.default_rng(seed)
    out = []
    for b, length in ((1, 1), (3, max_history), (17, max(1, max_history // 3)), (5, min(7, max_history))):
        h = rng.integers(0, n_items, size=(b, length))
        lens = rng.integers(0, length + 1, size=b)
        h[np.arange(length)[None, :] >= lens[:, None]] = PAD
        out.append(h.astype(np.int64))
    return out
