"""FAISS search for the service: over-fetch to filter, exact numpy search where the index cannot serve.

Loading (file -> CPU index -> optional GPU copy, manifest `search_params`) is NOT done here: it is the
shared reader `mrdib.artifact.faiss_io.load_index`, the same code the exporter measures recall with, so
the service searches with exactly the parameters whose recall the manifest reports.

What this module adds on top, like implicit's FAISS wrapper: ask the index for ``k + len(banned)``
neighbours so that excluded items can be dropped afterwards, and fall back to exact search when that
number is beyond what the index holds or when an approximate index returned too few usable hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from mrdib.artifact.faiss_io import LoadedIndex, gpu_available, load_index
from mrdib.artifact.schema import ArtifactError, Manifest

_SMALL_BAN = 512  # up to this many banned rows, filtering with a Python set beats np.isin


def gpu_count() -> int:
    """GPUs faiss can use (0 without faiss-gpu); for /model."""
    try:
        if not gpu_available():
            return 0
        import faiss

        return int(faiss.get_num_gpus())
    except Exception:  # faiss without GPU symbols, or a driver problem: report none
        return 0


class VectorIndex:
    """One metric over one item matrix (the artifact's rows, in order)."""

    def __init__(self, loaded: LoadedIndex, vectors: np.ndarray, source: str = "<index>"):
        self.loaded = loaded
        self.source = source
        cpu = loaded.cpu_index
        if cpu.ntotal != len(vectors) or cpu.d != vectors.shape[1]:
            raise ArtifactError(
                f"{source}: index holds {cpu.ntotal} vectors of dim {cpu.d}, item_vectors is {vectors.shape}"
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if loaded.metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = vectors  # exact fallback; normalised for cosine like the index
        self.metric = loaded.metric
        self.device = "cuda:0" if loaded.on_gpu else "cpu"
        self.size = int(cpu.ntotal)  # an attribute: read several times per request

    @classmethod
    def load(cls, artifact_dir: Path, metric: Literal["ip", "cosine"], manifest: Manifest, vectors: np.ndarray,
             use_gpu: bool) -> VectorIndex:
        """Open `manifest.indexes[metric]` through the shared reader. `use_gpu` False forces the CPU; True means
        "on a GPU when faiss-gpu sees one" (the reader's automatic mode), never a requirement."""
        spec = manifest.indexes.get(metric)
        loaded = load_index(Path(artifact_dir), metric, manifest, use_gpu=None if use_gpu else False)
        return cls(loaded, vectors, str(Path(artifact_dir) / spec.file) if spec else str(artifact_dir))

    def prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1)
        if self.metric == "cosine":
            q = q / max(float(np.linalg.norm(q)), 1e-12)
        return q

    def search(self, q: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Top `k` rows not in `banned` (int64 rows; duplicates allowed): (rows, scores, used_exact)."""
        k, banned, need = self._need(k, banned)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32), False
        if need <= self.size:
            scores, rows = self.loaded.search(q.reshape(1, -1), need)  # the reader normalises cosine queries
            rows, scores = self._drop(rows[0], scores[0], banned, k)
            if len(rows) >= k:
                return rows, scores, False
        rows, scores = self.exact(self.prepare(q)[0], k, banned)
        return rows, scores, True

    def search_many(self, qs: np.ndarray, ks: list[int], banned: list[np.ndarray]
                    ) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """`search` of each row of `qs` with its own k and banned rows, in ONE index search (as deep as the deepest
        query needs); a query the index cannot serve falls back to exact search alone, as in `search`."""
        prepared = [self._need(k, b) for k, b in zip(ks, banned, strict=True)]
        depth = max((need for k, _, need in prepared if k > 0 and need <= self.size), default=0)
        hits = self.loaded.search(qs, depth) if depth else None
        out = []
        for i, (k, b, need) in enumerate(prepared):
            if k <= 0:
                out.append((np.empty(0, np.int64), np.empty(0, np.float32), False))
                continue
            if hits is not None and need <= self.size:
                rows, scores = self._drop(hits[1][i], hits[0][i], b, k)
                if len(rows) >= k:
                    out.append((rows, scores, False))
                    continue
            rows, scores = self.exact(self.prepare(qs[i])[0], k, b)
            out.append((rows, scores, True))
        return out

    def _need(self, k: int, banned: np.ndarray) -> tuple[int, np.ndarray, int]:
        """(k the catalogue can give, banned rows, how many hits to ask the index for)."""
        n_banned = len(banned)
        if k + n_banned >= self.size and n_banned:
            banned = np.unique(banned)  # only near the catalogue size does the exact count matter
            n_banned = len(banned)
        k = min(k, self.size - n_banned)
        return k, banned, k + n_banned

    @staticmethod
    def _drop(rows: np.ndarray, scores: np.ndarray, banned: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `k` hits that are real (row >= 0) and not banned."""
        n_banned = len(banned)
        if n_banned <= _SMALL_BAN:
            # A set over a few dozen rows: np.isin sorts both arrays and cost ~100 us per request here.
            ban = set(banned.tolist()) if n_banned else ()
            keep = [j for j, r in enumerate(rows.tolist()) if r >= 0 and r not in ban][:k]
            return rows[keep], scores[keep]
        ok = (rows >= 0) & ~np.isin(rows, banned)
        return rows[ok][:k], scores[ok][:k]

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
