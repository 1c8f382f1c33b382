"""Build the artifact's two FAISS indexes, tune their search parameters, and measure them against exact search.

- ``index_ip.faiss``: inner product over the item vectors (recommendations: query = user vector).
- ``index_cos.faiss``: inner product over L2-normalised item vectors = cosine (similar items).

Factory choice by catalogue size (overridable with an explicit factory string):

- n_items <= EXACT_MAX_ITEMS (200,000): ``Flat`` -- exact; a [200k x 64] float32 scan is
  ~50 MB and a few ms per query batch on one CPU core, so approximation buys nothing.
- n_items <= HNSW_MAX_ITEMS (5,000,000): ``HNSW32`` (memory ~ vectors + ~256 B/item of graph).
- beyond: ``IVF{4 sqrt(n)},PQ{d/2}x4fs,Refine(SQ8)``: an inverted file of 4-bit product codes scanned with SIMD
  ("fast scan", 16 B/item at d=64) finds ``k_factor_rf x k`` candidates, which are re-ranked with 8-bit scalar
  codes (d B/item) -- ~90 B/item with the ids, a third of the float vectors. The former default,
  ``IVF{4 sqrt(n)},PQ{d/2}`` without re-ranking, measured recall@20 0.45-0.60 (docs/BENCHMARKS.md).

Search parameters are *tuned at build time* unless given: candidate settings (efSearch for HNSW; nprobe, and
k_factor_rf for a refined index) are tried on a sample of queries against exact search, and the fastest one
whose recall@K reaches `RECALL_TARGET` (0.95) is kept; the recall written into
``manifest.indexes[...].recall_at_k`` is then measured on OTHER queries (held out from the tuning), with the very
parameters stored in the manifest, which the service applies. Queries are users for ``ip`` (never part of the
index) and items for ``cosine``. When no candidate reaches the target, the best-recall one is kept and the
export logs a warning: the manifest always says what the index really achieves.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from mrdib.artifact.faiss_io import apply_search_params

log = structlog.get_logger("mrdib.export.index")

EXACT_MAX_ITEMS = 200_000
HNSW_MAX_ITEMS = 5_000_000
DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 32
DEFAULT_K_FACTOR = 8
RECALL_TARGET = 0.95
# Tuning grids, cheapest first. k_factor_rf only applies to refined indexes.
EF_GRID = (16, 32, 64, 128, 256, 512)
# IVF with inner product assigns by the largest dot product with a centroid, which misses neighbours of queries that
# lie between clusters: on embedding-like data recall@20 needs a large share of the lists probed (measured: 0.92 at
# nprobe 512 of 4,000 lists at 1M items, 0.79 at 512 of 8,944 at 5M; docs/BENCHMARKS.md), hence the long grid.
NPROBE_GRID = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
K_FACTOR_GRID = (2, 4, 8, 16, 32, 64, 128, 256)
TRAIN_SAMPLE_MIN, TRAIN_SAMPLE_MAX = 100_000, 500_000  # IVF: >= 39 points per list when it fits


def choose_factory(n_items: int, dim: int) -> str:
    """Index factory string for a catalogue of `n_items` vectors of dimension `dim` (see module doc)."""
    if n_items <= EXACT_MAX_ITEMS:
        return "Flat"
    if n_items <= HNSW_MAX_ITEMS:
        return "HNSW32"
    return large_factory(n_items, dim)


def large_factory(n_items: int, dim: int) -> str:
    """The compressed, re-ranked default of catalogues beyond HNSW_MAX_ITEMS (bench/index.py measures it at any
    size)."""
    nlist = int(4 * math.sqrt(n_items))
    # 4-bit fast-scan codes need an even number of sub-quantizers dividing d; d/2 (2 dims each) when possible.
    m = max((mm for mm in range(2, dim // 2 + 1, 2) if dim % mm == 0), default=0)
    if m == 0:
        return f"IVF{nlist},SQ8"  # odd tiny dims: no fast-scan PQ fits
    return f"IVF{nlist},PQ{m}x4fs,Refine(SQ8)"


def is_refined(factory: str) -> bool:
    return "Refine(" in factory or factory.endswith(",RFlat")


def is_ivf(factory: str) -> bool:
    return factory.startswith("IVF") or ",IVF" in factory


def default_search_params(factory: str) -> dict[str, int | float]:
    """Untuned search-time parameters that go with a factory string (the tuner's fallback)."""
    if "HNSW" in factory:
        return {"efSearch": DEFAULT_EF_SEARCH}
    params: dict[str, int | float] = {}
    if is_ivf(factory):
        params["nprobe"] = DEFAULT_NPROBE
    if is_refined(factory):
        params["k_factor_rf"] = DEFAULT_K_FACTOR
    return params


def search_grid(factory: str) -> list[dict[str, int | float]]:
    """Candidate search parameters of `factory`, roughly cheapest first ([] = nothing to tune)."""
    if "HNSW" in factory:
        return [{"efSearch": ef} for ef in EF_GRID]
    nlist = _nlist(factory)
    probes = [p for p in NPROBE_GRID if p < nlist] + [nlist] if nlist else list(NPROBE_GRID)
    if is_ivf(factory) and is_refined(factory):
        return [{"nprobe": p, "k_factor_rf": kf} for p, kf in itertools.product(probes, K_FACTOR_GRID)]
    if is_ivf(factory):
        return [{"nprobe": p} for p in probes]
    return []


def _nlist(factory: str) -> int:
    """The list count of an `IVF<n>` factory (0 when not stated that way): probing more is the same as all."""
    import re

    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else 0


def normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(vectors: np.ndarray, factory: str, search_params: dict[str, int | float], seed: int = 0):
    """An inner-product FAISS index over `vectors`, trained when the factory needs it."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"invalid FAISS index factory string {factory!r}: {e}") from e
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        n_train = TRAIN_SAMPLE_MIN
        if is_ivf(factory):
            n_train = min(TRAIN_SAMPLE_MAX, max(TRAIN_SAMPLE_MIN, 39 * faiss.extract_index_ivf(index).nlist))
        sample = x if len(x) <= n_train else x[np.sort(rng.choice(len(x), n_train, replace=False))]
        index.train(sample)
    index.add(x)
    apply_search_params(index, search_params)
    return index


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, max_scores: int = 1 << 26) -> np.ndarray:
    """Item rows of the exact top-k by inner product, best first (ties broken by lower row). Queries go in chunks
    of at most `max_scores` scores (256 MiB), so 1,000 queries over 10M items do not need a 40 GB matrix."""
    k = min(k, base.shape[0])
    out = np.empty((len(queries), k), dtype=np.int64)
    step = max(1, max_scores // max(1, base.shape[0]))
    for s in range(0, len(queries), step):
        scores = queries[s:s + step] @ base.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
        out[s:s + step] = np.take_along_axis(part, order, axis=1)
    return out


def index_recall(index, queries: np.ndarray, base: np.ndarray, k: int, truth: np.ndarray | None = None) -> float:
    """Mean |approx top-k ∩ exact top-k| / k over the queries (`truth`: their exact top-k, if known)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, base.shape[0])
    _, got = index.search(q, k)
    want = exact_topk(q, base, k) if truth is None else truth[:, :k]
    hits = [len(np.intersect1d(g[g >= 0], w)) for g, w in zip(got, want, strict=True)]
    return float(np.mean(hits) / k)


@dataclass
class Tuning:
    """What the build-time tuning tried and kept (logged; the manifest stores `params` and the held-out recall)."""

    params: dict[str, int | float]
    recall_tune: float
    recall_heldout: float
    target: float
    met: bool
    tried: list[tuple[dict, float, float]] = field(default_factory=list)  # (params, tune recall, ms per query)


def tune_search_params(index, factory: str, base: np.ndarray, tune_q: np.ndarray, held_q: np.ndarray, k: int,
                       target: float = RECALL_TARGET) -> Tuning:
    """Pick the fastest candidate of `search_grid(factory)` whose recall@k on `tune_q` reaches `target` and
    confirm it on `held_q`; see the module docstring. Leaves `index` set to the kept parameters."""
    import faiss

    k = min(k, base.shape[0])
    truth_tune, truth_held = exact_topk(tune_q, base, k), exact_topk(held_q, base, k)
    tried: list[tuple[dict, float, float]] = []
    meeting: list[tuple[float, dict, float]] = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the service searches one query per call on one thread: time it that way
    try:
        grid = search_grid(factory)
        done_prefix: set = set()
        for params in grid:
            coarse = params.get("nprobe", params.get("efSearch"))
            if coarse in done_prefix:
                continue  # a cheaper k_factor already met the target at this nprobe
            apply_search_params(index, params)
            r = index_recall(index, tune_q, base, k, truth_tune)
            t = time.perf_counter()
            for q in tune_q[: min(len(tune_q), 200)]:
                index.search(q[None, :], k)
            ms = (time.perf_counter() - t) / min(len(tune_q), 200) * 1e3
            tried.append((params, r, ms))
            if r >= target:
                meeting.append((ms, params, r))
                if "k_factor_rf" in params:
                    done_prefix.add(coarse)
                elif "efSearch" in params or "nprobe" in params:
                    break  # one knob, monotone: larger only costs more
    finally:
        faiss.omp_set_num_threads(threads)
    for _, params, r in sorted(meeting, key=lambda m: m[0]):
        apply_search_params(index, params)
        held = index_recall(index, held_q, base, k, truth_held)
        if held >= target:
            return Tuning(params, r, held, target, True, tried)
    best = max(tried, key=lambda t: t[1]) if tried else (default_search_params(factory), float("nan"), 0.0)
    apply_search_params(index, best[0])
    held = index_recall(index, held_q, base, k, truth_held)
    return Tuning(best[0], best[1], held, target, False, tried)


@dataclass(frozen=True)
class BuiltIndex:
    """One written index and the manifest entry (IndexSpec fields) describing it."""

    path: Path
    spec: dict
    tuning: Tuning | None = None


def _split_queries(pool: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tuning queries, held-out queries): disjoint samples of `pool`, up to `n` each (half each when smaller)."""
    take = min(len(pool), 2 * n)
    rows = rng.choice(len(pool), take, replace=False)
    half = take // 2 if take < 2 * n else n
    tune, held = pool[rows[:half]], pool[rows[half:]]
    return (tune, held) if len(held) else (tune, tune)


def build_indexes(
    item_vectors: np.ndarray,
    user_vectors: np.ndarray,
    out_dir: Path,
    factory: str | None = None,
    search_params: dict[str, int | float] | None = None,
    k: int = 20,
    n_queries: int = 1000,
    seed: int = 0,
    target: float = RECALL_TARGET,
) -> dict[str, BuiltIndex]:
    """Write index_ip.faiss and index_cos.faiss into `out_dir`; returns {"ip": ..., "cosine": ...}.

    `factory` None = ``choose_factory``; `search_params` None = tuned to `target` (module docstring), else used
    as given. Recall is measured on up to `n_queries` held-out users (ip) / items (cosine).
    """
    import faiss

    from mrdib.artifact import schema as S

    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    factory = factory or choose_factory(*items.shape)
    rng = np.random.default_rng(seed)
    users = np.asarray(user_vectors, dtype=np.float32)
    if len(users) == 0:
        users = items  # no users to sample: measure the ip index with item queries
    normed = normalise(items)
    out: dict[str, BuiltIndex] = {}
    for metric, base, pool, fname in (
        ("ip", items, users, S.INDEX_IP),
        ("cosine", normed, normed, S.INDEX_COS),
    ):
        tune_q, held_q = _split_queries(pool, n_queries, rng)
        params = default_search_params(factory) if search_params is None else dict(search_params)
        index = build_index(base, factory, params, seed)
        tuning = None
        if search_params is None and search_grid(factory):
            tuning = tune_search_params(index, factory, base, tune_q, held_q, k, target)
            params, recall = tuning.params, tuning.recall_heldout
            log_fn = log.info if tuning.met else log.warning
            log_fn("index_tuned", metric=metric, factory=factory, search_params=params, target=target,
                   recall_tune=round(tuning.recall_tune, 4), recall_heldout=round(recall, 4), met=tuning.met,
                   tried=len(tuning.tried), queries=(len(tune_q), len(held_q)))
        else:
            recall = index_recall(index, held_q, base, k)
        path = Path(out_dir) / fname
        faiss.write_index(index, str(path))
        spec = {
            "file": fname,
            "factory": factory,
            "metric": metric,
            "recall_at_k": round(recall, 6),
            "recall_k": min(k, len(items)),
            "search_params": params,
        }
        out[metric] = BuiltIndex(path=path, spec=spec, tuning=tuning)
    return out
