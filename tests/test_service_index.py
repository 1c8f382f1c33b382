"""FAISS wrapper: over-fetch with filtering, and exact fallback where an approximate index cannot serve."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mrdib.artifact.schema import ArtifactError
from service.index import VectorIndex


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
    idx = VectorIndex(d / "flat.faiss", x, "ip")
    q = x[5]
    banned = np.array([5, 17, 42], dtype=np.int64)
    rows, scores, exact = idx.search(q, 10, banned)
    assert not exact and list(rows) == brute(x, q, 10, banned)
    assert np.allclose(scores, x[rows] @ q, atol=1e-5)


def test_exact_fallback_when_index_cannot_serve(data):
    x, d = data
    # nprobe=1 over 16 lists sees ~1/16 of the items: asking for 100 of them cannot be served.
    idx = VectorIndex(d / "ivf.faiss", x, "ip", search_params={"nprobe": 1})
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
    idx = VectorIndex(d / "cos.faiss", x, "cosine")
    rows, scores, _ = idx.search(3 * x[7], 5, np.array([], dtype=np.int64))
    assert rows[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ArtifactError, match="index holds 300 vectors"):
        VectorIndex(d / "cos.faiss", x[:10], "cosine")
    (d / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match=r"junk\.faiss"):
        VectorIndex(d / "junk.faiss", x, "ip")
