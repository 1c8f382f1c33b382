"""Read side of the artifact's FAISS indexes (service side: no torch).

The artifact stores CPU indexes only; whether they are searched on a GPU is decided here, at
load time, from what is installed: faiss with GPU support and at least one visible GPU
(``faiss.get_num_gpus() > 0``) -> the index is copied to GPU 0; otherwise, or when the index
type has no GPU implementation (HNSW), it stays on the CPU. Nothing in the artifact depends on
which. The manifest's ``search_params`` (efSearch, nprobe, ...) are applied either way.

Also used by the training side (``training/export/index.py``) so that the recall it records
is measured with exactly the parameters the service will use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrdib.artifact.schema import ArtifactError, Manifest

# faiss-gpu refuses k above this on most index types; larger requests are served on the CPU copy.
GPU_MAX_K = 2048


def apply_search_params(index: Any, params: dict[str, int | float], gpu: bool = False) -> None:
    """Set runtime search parameters (e.g. {"efSearch": 128} or {"nprobe": 16}) on a CPU or GPU index."""
    if not params:
        return
    import faiss

    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError as e:
            raise ArtifactError(f"search parameter {name}={value!r} does not apply to this index: {e}") from e


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class LoadedIndex:
    """A searchable index plus what it needs at query time.

    ``index`` is the index actually searched (GPU copy when on_gpu); ``cpu_index`` serves
    requests the GPU cannot (k > GPU_MAX_K).
    """

    index: Any
    cpu_index: Any
    metric: Literal["ip", "cosine"]
    on_gpu: bool
    _resources: Any = field(default=None, repr=False)  # keeps the GPU memory pool alive

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32 [n, k], item rows int64 [n, k]; -1 where fewer exist).

        For the cosine index the queries are L2-normalised here, as the stored vectors are.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = max(1, min(int(k), self.ntotal))
        idx = self.index if (not self.on_gpu or k <= GPU_MAX_K) else self.cpu_index
        scores, rows = idx.search(q, k)
        return scores, rows.astype(np.int64, copy=False)


def load_index(
    artifact_dir: Path, metric: Literal["ip", "cosine"], manifest: Manifest, use_gpu: bool | None = None
) -> LoadedIndex:
    """Load ``manifest.indexes[metric]`` from a (verified) artifact directory.

    use_gpu: None = automatic (GPU when available); False forces the CPU; True requires a GPU.
    """
    import faiss

    spec = manifest.indexes.get(metric)
    if spec is None:
        raise ArtifactError(f"{artifact_dir}: manifest has no {metric!r} index")
    path = Path(artifact_dir) / spec.file
    try:
        cpu = faiss.read_index(str(path))
    except RuntimeError as e:
        raise ArtifactError(f"{path}: unreadable FAISS index: {e}") from e
    if cpu.ntotal != manifest.n_items or cpu.d != manifest.embedding_dim:
        raise ArtifactError(
            f"{path}: index holds {cpu.ntotal} vectors of dim {cpu.d}, manifest says "
            f"{manifest.n_items} x {manifest.embedding_dim}"
        )
    if cpu.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ArtifactError(f"{path}: index metric is {cpu.metric_type}, expected inner product")
    apply_search_params(cpu, spec.search_params)
    want_gpu = gpu_available() if use_gpu is None else use_gpu
    if want_gpu and not gpu_available():
        raise ArtifactError("use_gpu=True but faiss has no GPU support or sees no GPU")
    if want_gpu:
        res = faiss.StandardGpuResources()
        try:
            gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        except RuntimeError:
            if use_gpu:
                raise
            # index type without a GPU implementation (e.g. HNSW): serve from the CPU
            return LoadedIndex(index=cpu, cpu_index=cpu, metric=metric, on_gpu=False)
        apply_search_params(gpu, spec.search_params, gpu=True)
        return LoadedIndex(index=gpu, cpu_index=cpu, metric=metric, on_gpu=True, _resources=res)
    return LoadedIndex(index=cpu, cpu_index=cpu, metric=metric, on_gpu=False)
