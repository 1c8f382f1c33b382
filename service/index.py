"""FAISS index wrapper: over-fetch to filter, exact numpy search where the index cannot serve.

Like implicit's FAISS wrapper: ask the index for ``k + len(banned)`` neighbours so that
excluded items can be dropped afterwards, and fall back to exact search when that number is
beyond what the index can return (GPU k limit, more than the catalogue) or when an
approximate index returned too few usable hits. The index moves to faiss-gpu when faiss was
built with GPU support and a GPU is visible.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from mrdib.artifact.schema import ArtifactError

GPU_MAX_K = 2048  # faiss-gpu cannot return more neighbours than this per query


def gpu_count() -> int:
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
    except Exception:  # faiss without GPU symbols
        return 0


class VectorIndex:
    """One metric over one item matrix (the rows of the artifact, in order)."""

    def __init__(self, path: Path, vectors: np.ndarray, metric: str, search_params: dict | None = None,
                 use_gpu: bool = False):
        self.path = Path(path)
        try:
            index = faiss.read_index(str(self.path))
        except Exception as e:  # faiss raises RuntimeError with a C++ message
            raise ArtifactError(f"{self.path}: faiss cannot read the index: {e}") from e
        if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
            raise ArtifactError(
                f"{self.path}: index holds {index.ntotal} vectors of dim {index.d}, item_vectors is {vectors.shape}"
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if metric == "cosine":
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        self.vectors = vectors
        self.metric = metric
        if search_params:
            ps = faiss.ParameterSpace()
            for name, value in search_params.items():
                try:
                    ps.set_index_parameter(index, name, value)
                except Exception as e:
                    raise ArtifactError(f"{self.path}: cannot set search parameter {name}={value}: {e}") from e
        self.device = "cpu"
        self.max_k = index.ntotal
        if use_gpu and gpu_count() > 0:
            try:
                self._gpu_res = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
                self.device = "cuda:0"
                self.max_k = min(index.ntotal, GPU_MAX_K)
            except Exception:  # index type without a GPU implementation: stay on CPU
                self.device = "cpu"
        self.index = index

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
        if self.metric == "cosine":
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        return q

    def search(self, q: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Top `k` rows not in `banned` (sorted unique int64 rows): (rows, scores, used_exact)."""
        q = self.prepare(q)
        k = min(k, self.size - len(banned))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32), False
        need = k + len(banned)
        if need <= self.max_k:
            scores, rows = self.index.search(q, need)
            scores, rows = scores[0], rows[0].astype(np.int64)
            ok = (rows >= 0) & ~np.isin(rows, banned, assume_unique=False)
            rows, scores = rows[ok], scores[ok]
            if len(rows) >= k:
                return rows[:k], scores[:k], False
        rows, scores = self.exact(q[0], k, banned)
        return rows, scores, True

    def exact(self, q: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by numpy over the stored (normalised for cosine) vectors."""
        scores = self.vectors @ q
        if len(banned):
            scores[banned] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.astype(np.int64), scores[top].astype(np.float32)
