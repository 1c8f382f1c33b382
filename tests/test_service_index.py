"""FAISS wrapper: over-fetch with filtering, and exact fallback where an approximate index cannot serve.

Indexes are opened through the shared reader (`mrdib.artifact.faiss_io`): `LoadedIndex` directly for the
search logic, `VectorIndex.load` over a real published artifact for the loading path."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mrdib.artifact.faiss_io import LoadedIndex, apply_search_params
from mrdib.artifact.schema import ArtifactError
from mrdib.artifact.store import load_artifact
from service.index import VectorIndex
from tests._service_helpers import assert_topk


def opened(path, metric: str = "ip", params: dict | None = None) -> LoadedIndex:
    index = faiss.read_index(str(path))
    apply_search_params(index, params or {})
    return LoadedIndex(index=index, cpu_index=index, metric=metric, on_gpu=False)


def brute(vectors: np.ndarray, q: np.ndarray, k: int, banned) -> list[int]:
    s = vectors @ q
    s[list(banned)] = -np.inf
    return list(np.argsort(-s, kind="stable")[:k])


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    flat = faiss.IndexFlatIP(8)
    flat.add(x)
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    ivf = faiss.index_factory(8, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    return x, tmp_path


def test_flat_search_filters_banned(data):
    x, d = data
    idx = VectorIndex(opened(d / "flat.faiss"), x)
    q = x[5]
    banned = np.array([5, 17, 42], dtype=np.int64)
    rows, scores, exact = idx.search(q, 10, banned)
    assert not exact and list(rows) == brute(x, q, 10, banned)
    assert np.allclose(scores, x[rows] @ q, atol=1e-5)


def test_exact_fallback_when_index_cannot_serve(data):
    x, d = data
    # nprobe=1 over 16 lists sees ~1/16 of the items: asking for 100 of them cannot be served.
    idx = VectorIndex(opened(d / "ivf.faiss", params={"nprobe": 1}), x)
    q = x[0]
    rows, _, exact = idx.search(q, 100, np.array([0], dtype=np.int64))
    assert exact and list(rows) == brute(x, q, 100, [0])
    # more than the catalogue minus the banned: everything that is left, best first
    rows, _, _ = idx.search(q, 1000, np.arange(250, dtype=np.int64))
    assert sorted(rows) == list(range(250, 300))


def test_cosine_index_and_mismatch(data):
    x, d = data
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = faiss.IndexFlatIP(8)
    cos.add(xn)
    faiss.write_index(cos, str(d / "cos.faiss"))
    idx = VectorIndex(opened(d / "cos.faiss", "cosine"), x)
    rows, scores, _ = idx.search(3 * x[7], 5, np.array([], dtype=np.int64))
    assert rows[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-5)
    # exact fallback on the cosine index normalises like the index: same order and scores
    erows, escores = idx.exact(idx.prepare(3 * x[7])[0], 5, np.array([], dtype=np.int64))
    assert list(erows) == list(rows) and np.allclose(escores, scores, atol=1e-5)
    with pytest.raises(ArtifactError, match="index holds 300 vectors"):
        VectorIndex(opened(d / "cos.faiss", "cosine"), x[:10])


def test_duplicate_banned_rows_are_harmless(data):
    x, d = data
    idx = VectorIndex(opened(d / "flat.faiss"), x)
    banned = np.array([3, 3, 3, 9, 9], dtype=np.int64)
    rows, _, _ = idx.search(x[3], 10, banned)
    assert list(rows) == brute(x, x[3], 10, [3, 9])
    # near the catalogue size the count of distinct banned rows decides how many are left
    rows, _, _ = idx.search(x[3], 300, np.concatenate([banned, np.arange(250, dtype=np.int64)]))
    assert sorted(rows) == list(range(250, 300))


def test_load_goes_through_the_shared_reader(tmp_path, build_artifact):
    root = tmp_path / "art"
    v = build_artifact(root)
    art = load_artifact(root / v)
    idx = VectorIndex.load(art.path, "ip", art.manifest, art.item_vectors, use_gpu=False)
    assert idx.device == "cpu" and idx.size == art.manifest.n_items and isinstance(idx.loaded, LoadedIndex)
    # The trained artifact's exported index answers the exact top-k of its own vectors.
    seen = art.seen_items(1)
    rows, scores, exact = idx.search(art.user_vectors[1], 5, seen)
    assert not exact
    assert_topk([{"item_id": art.item_ids[r], "score": s} for r, s in zip(rows.tolist(), scores.tolist(), strict=True)],
                art, art.user_vectors[1], seen, 5)
    (root / v / "index_ip.faiss").write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match=r"index_ip\.faiss"):
        VectorIndex.load(art.path, "ip", art.manifest, art.item_vectors, use_gpu=False)
