"""onnxruntime wrappers of the two towers shipped in an artifact.

The artifact's exporter owns the ONNX signatures; this module adapts to them by reading the
session's declared inputs instead of hard-coding one layout:

* user tower: an int64 ``[B, L]`` input of item rows, most recent first (``history``), plus
  optionally a ``mask`` ([B, L], bool/float/int) or ``lengths`` ([B] int64) input. Without a
  mask/lengths input the padding value is -1 (the tower masks negative rows itself); with one,
  padding is row 0 and the mask says what is real. A static L in the graph is honoured.
  Output ``user_vector`` (or the only output) float32 ``[B, d]``.
* item tower: one float32 ``[B, d_m]`` input per modality, named by the modality; output
  ``item_vector`` float32 ``[B, d]``.

The device is chosen here, once: the CUDA execution provider when onnxruntime-gpu is installed,
a GPU is visible and `use_gpu` is set; the providers the session really activated are reported.
onnxruntime falls back to CPU silently (a missing CUDA library, a driver mismatch): when an accelerator
was asked for and is not active, or `use_gpu` is set and a GPU is present but this onnxruntime has no
CUDA provider at all, a warning names the requested and the active providers (`check_providers`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from mrdib.artifact.bounds import vector_problem
from mrdib.artifact.schema import ArtifactError

log = structlog.get_logger("mrdib.service.towers")
CPU = "CPUExecutionProvider"

_ORT_DTYPES = {
    "tensor(bool)": np.bool_,
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def choose_providers(use_gpu: bool) -> list[str]:
    """Providers to ask for, best first; CPU is always the last resort."""
    available = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", CPU]
    return [CPU]


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this process (device node present and not hidden by CUDA_VISIBLE_DEVICES)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def check_providers(model: Path, requested: Sequence[str], active: Sequence[str], gpu_expected: bool) -> list[str]:
    """Warn when the session runs on fewer devices than intended; returns the accelerators that are missing.

    Two cases: an accelerator provider was requested but the session did not activate it (onnxruntime
    then runs on CPU without an error), or `gpu_expected` (use_gpu set, a GPU present) while only CPU was
    requested because this onnxruntime build has no CUDA provider (onnxruntime instead of onnxruntime-gpu)."""
    missing = [p for p in requested if p != CPU and p not in active]
    if missing:
        log.warning("onnx_provider_fallback", model=str(model), requested=list(requested), active=list(active),
                    missing=missing, hint="the tower runs on the active providers; check the CUDA/cuDNN libraries")
    elif gpu_expected and all(p == CPU for p in requested):
        missing = ["CUDAExecutionProvider"]
        log.warning("onnx_gpu_unused", model=str(model), requested=list(requested), active=list(active),
                    available=ort.get_available_providers(),
                    hint="a GPU is present but this onnxruntime has no CUDA provider: install onnxruntime-gpu")
    return missing


def _session(path: Path, intra_threads: int, use_gpu: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    requested = choose_providers(use_gpu)
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=requested)
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise ArtifactError(f"{path}: onnxruntime cannot load the model: {e}") from e
    check_providers(path, requested, sess.get_providers(), gpu_expected=use_gpu and gpu_present())
    return sess


class UserTower:
    """History of item rows -> user vector."""

    def __init__(self, path: Path, dim: int, max_history: int, intra_threads: int = 1, use_gpu: bool = False):
        self.path = Path(path)
        self.sess = _session(self.path, intra_threads, use_gpu)
        self.dim = dim
        self.max_history = max_history
        inputs = {i.name: i for i in self.sess.get_inputs()}
        hist = [i for i in inputs.values() if i.type == "tensor(int64)" and len(i.shape) == 2]
        named = [i for i in hist if i.name in ("history", "items", "item_rows")]
        if not hist:
            raise ArtifactError(f"{self.path}: user tower has no int64 [B, L] history input (inputs: {list(inputs)})")
        self.history_input = (named or hist)[0].name
        static_len = (named or hist)[0].shape[1]
        self.static_len = static_len if isinstance(static_len, int) and static_len > 0 else None
        self.mask_input = next((i for i in inputs.values() if "mask" in i.name.lower()), None)
        self.lengths_input = next((i for i in inputs.values() if "len" in i.name.lower()), None)
        extra = set(inputs) - {self.history_input} - {
            x.name for x in (self.mask_input, self.lengths_input) if x is not None
        }
        if extra:
            raise ArtifactError(f"{self.path}: user tower has inputs this service cannot fill: {sorted(extra)}")
        outs = [o.name for o in self.sess.get_outputs()]
        self.output = "user_vector" if "user_vector" in outs else outs[0]
        got = self.embed(np.array([0], dtype=np.int64))
        if got.shape != (dim,):
            raise ArtifactError(f"{self.path}: user tower returns shape {got.shape}, manifest says ({dim},)")
        problem = vector_problem(got)
        if problem:
            raise ArtifactError(f"{self.path}: user tower output for a one-item history cannot be served: {problem}")

    @property
    def providers(self) -> list[str]:
        return list(self.sess.get_providers())

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """User vector float32 [d] of one history (item rows, most recent first, non-empty)."""
        return self.embed_many([rows])[0]

    def embed_many(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """User vectors float32 [B, d] of B histories (item rows, most recent first; each capped at max_history;
        an empty one gives the tower's empty-history vector), in one session run."""
        hs = [np.asarray(h, dtype=np.int64)[: self.max_history] for h in histories]
        length = self.static_len or max(1, max(len(h) for h in hs))
        hs = [h[:length] for h in hs]
        has_mask = self.mask_input is not None or self.lengths_input is not None
        batch = np.full((len(hs), length), 0 if has_mask else -1, dtype=np.int64)
        for b, h in enumerate(hs):
            batch[b, : len(h)] = h
        feeds: dict[str, np.ndarray] = {self.history_input: batch}
        if self.mask_input is not None:
            mask = np.zeros((len(hs), length), dtype=_ORT_DTYPES.get(self.mask_input.type, np.bool_))
            for b, h in enumerate(hs):
                mask[b, : len(h)] = 1
            feeds[self.mask_input.name] = mask
        if self.lengths_input is not None:
            feeds[self.lengths_input.name] = np.array([len(h) for h in hs], dtype=_ORT_DTYPES.get(
                self.lengths_input.type, np.int64))
        out = self.sess.run([self.output], feeds)[0]
        return np.asarray(out, dtype=np.float32).reshape(len(hs), -1)


class ItemTower:
    """Modality features of one item -> item vector (cold-start and changed items)."""

    def __init__(self, path: Path, modalities: dict[str, int], dim: int, intra_threads: int = 1,
                 use_gpu: bool = False):
        self.path = Path(path)
        self.sess = _session(self.path, intra_threads, use_gpu)
        self.modalities = dict(modalities)
        self.dim = dim
        names = {i.name for i in self.sess.get_inputs()}
        if names != set(modalities):
            raise ArtifactError(
                f"{self.path}: item tower inputs {sorted(names)} differ from manifest modalities {sorted(modalities)}"
            )
        outs = [o.name for o in self.sess.get_outputs()]
        self.output = "item_vector" if "item_vector" in outs else outs[0]
        got = self.embed({m: np.zeros(d, np.float32) for m, d in modalities.items()})
        if got.shape != (dim,):
            raise ArtifactError(f"{self.path}: item tower returns shape {got.shape}, manifest says ({dim},)")
        problem = vector_problem(got)
        if problem:
            raise ArtifactError(f"{self.path}: item tower output for all-zero features cannot be served: {problem}")

    @property
    def providers(self) -> list[str]:
        return list(self.sess.get_providers())

    def embed(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Item vector float32 [d]; `features` must hold every modality with its declared dim."""
        feeds = {m: np.asarray(features[m], dtype=np.float32).reshape(1, -1) for m in self.modalities}
        out = self.sess.run([self.output], feeds)[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)
