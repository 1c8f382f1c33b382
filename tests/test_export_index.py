"""FAISS indexes: factory choice, exact = numpy, approximate meets its recorded recall, service loader."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from mrdib.artifact import schema as S
from mrdib.artifact.faiss_io import LoadedIndex, load_index
from mrdib.artifact.schema import ArtifactError, Manifest
from training.export.index import (
    EXACT_MAX_ITEMS,
    HNSW_MAX_ITEMS,
    build_indexes,
    choose_factory,
    default_search_params,
    exact_topk,
    index_recall,
    normalise,
)


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _manifest(n_items: int, d: int, specs: dict) -> Manifest:
    """A manifest that is valid for the index loader (the other files are not read by it)."""
    entry = {"sha256": "0" * 64, "bytes": 0}
    return Manifest.model_validate(
        {
            "schema_version": S.SCHEMA_VERSION, "model_version": "20260101T000000Z-0000abcd",
            "created_at": datetime.now(UTC), "backbone": "bpr", "modalities": [{"name": "x", "dim": 1}],
            "embedding_dim": d, "n_users": 1, "n_items": n_items, "n_train_interactions": 0, "max_history": 5,
            "components": ["collaborative"], "data_fingerprint": "f", "indexes": specs,
            "files": {f: entry for f in S.REQUIRED_FILES},
        }
    )


def test_factory_choice_by_catalogue_size() -> None:
    assert choose_factory(1000, 64) == "Flat"
    assert choose_factory(EXACT_MAX_ITEMS, 64) == "Flat"
    assert choose_factory(EXACT_MAX_ITEMS + 1, 64) == "HNSW32"
    f = choose_factory(HNSW_MAX_ITEMS + 1, 64)
    assert f == f"IVF{int(4 * (HNSW_MAX_ITEMS + 1) ** 0.5)},PQ32x4fs,Refine(SQ8)"  # re-ranked, see test below
    assert choose_factory(HNSW_MAX_ITEMS + 1, 48) .endswith(",PQ24x4fs,Refine(SQ8)")
    assert default_search_params("HNSW32") == {"efSearch": 128}
    assert set(default_search_params(f)) == {"nprobe", "k_factor_rf"}
    assert default_search_params("Flat") == {}


def test_large_catalogue_default_is_tuned_to_the_recall_target_on_held_out_queries(tmp_path: Path) -> None:
    """The >5M default's structure (IVF + 4-bit fast-scan PQ + SQ8 re-ranking), at test size, on embedding-like
    vectors (bench/index.py's clustered data, d=64): the exporter picks nprobe and k_factor itself, and the recall
    it records is met again, through the service's loader, on queries it never saw."""
    from bench.index import clustered

    items, queries = clustered(20_000, 900, seed=3, n_clusters=200)
    users, fresh = queries[:600], queries[600:]
    factory = "IVF128,PQ32x4fs,Refine(SQ8)"  # choose_factory's shape for d=64 (nlist scaled down)
    built = build_indexes(items, users, tmp_path, factory=factory, k=20, n_queries=300)
    spec, tuning = built["ip"].spec, built["ip"].tuning
    assert tuning is not None and tuning.met and tuning.params == spec["search_params"]
    assert set(spec["search_params"]) == {"nprobe", "k_factor_rf"}
    assert spec["recall_at_k"] >= 0.95 and spec["recall_at_k"] == round(tuning.recall_heldout, 6)
    assert len(tuning.tried) > 1 and min(r for _, r, _ in tuning.tried) < 0.95  # the cheap settings do miss
    m = _manifest(20_000, 64, {k: b.spec for k, b in built.items()})
    loaded = load_index(tmp_path, "ip", m, use_gpu=False)  # the service's loader applies the tuned params
    assert index_recall(loaded.index, fresh, items, 20) >= 0.93
    assert built["cosine"].spec["recall_at_k"] >= 0.95 and built["cosine"].tuning.met


def test_tuning_that_cannot_reach_the_target_records_what_it_reaches(tmp_path: Path) -> None:
    items, users = _vectors(5000, 16), _vectors(300, 16, seed=3)  # iid: no structure, 2-byte codes
    built = build_indexes(items, users, tmp_path, factory="IVF64,PQ2", k=20, n_queries=150)
    spec, tuning = built["ip"].spec, built["ip"].tuning
    assert not tuning.met and spec["recall_at_k"] < 0.95
    assert spec["search_params"] == max(tuning.tried, key=lambda t: t[1])[0]  # the best it found
    m = _manifest(5000, 16, {k: b.spec for k, b in built.items()})
    again = index_recall(load_index(tmp_path, "ip", m, use_gpu=False).index, _vectors(150, 16, seed=8), items, 20)
    assert abs(again - spec["recall_at_k"]) < 0.1


def test_exact_index_equals_numpy_topk(tmp_path: Path) -> None:
    items, users = _vectors(500, 16), _vectors(40, 16, seed=1)
    built = build_indexes(items, users, tmp_path, factory=None, k=20)
    m = _manifest(500, 16, {k: b.spec for k, b in built.items()})
    assert m.indexes["ip"].factory == "Flat" and m.indexes["ip"].recall_at_k == 1.0
    ip = load_index(tmp_path, "ip", m, use_gpu=False)
    scores, rows = ip.search(users, 20)
    np.testing.assert_array_equal(rows, exact_topk(users, items, 20))
    np.testing.assert_allclose(scores, np.take_along_axis(users @ items.T, rows, 1), rtol=1e-5, atol=1e-5)
    cos = load_index(tmp_path, "cosine", m, use_gpu=False)
    _, rows_c = cos.search(items[:10] * 7.0, 5)  # queries are normalised by the loader
    np.testing.assert_array_equal(rows_c, exact_topk(normalise(items[:10]), normalise(items), 5))
    assert rows_c[:, 0].tolist() == list(range(10))  # each item is most similar to itself


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_approximate_index_meets_its_recorded_recall(tmp_path: Path, factory: str) -> None:
    items, users = _vectors(2000, 16), _vectors(200, 16, seed=2)
    params = {"efSearch": 64} if factory.startswith("HNSW") else {"nprobe": 4}
    built = build_indexes(items, users, tmp_path, factory=factory, search_params=params, k=10, n_queries=200)
    spec = built["ip"].spec
    assert spec["factory"] == factory and spec["search_params"] == params
    assert 0.5 < spec["recall_at_k"] <= 1.0
    m = _manifest(2000, 16, {k: b.spec for k, b in built.items()})
    loaded: LoadedIndex = load_index(tmp_path, "ip", m, use_gpu=False)
    # measured again, on other queries, through the service loader (which applies search_params)
    fresh = _vectors(200, 16, seed=9)
    again = index_recall(loaded.index, fresh, items, 10)
    assert again >= spec["recall_at_k"] - 0.05, (again, spec["recall_at_k"])
    # and the parameters matter: with the weakest setting recall drops (so they really were applied)
    if factory.startswith("IVF"):
        weak = load_index(tmp_path, "ip", _manifest(2000, 16, {
            "ip": {**spec, "search_params": {"nprobe": 1}}, "cosine": built["cosine"].spec}), use_gpu=False)
        assert index_recall(weak.index, fresh, items, 10) < again


def test_invalid_factory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid FAISS index factory"):
        build_indexes(_vectors(50, 8), _vectors(5, 8), tmp_path, factory="NoSuchIndex42")


def test_loader_refuses_an_index_that_disagrees_with_the_manifest(tmp_path: Path) -> None:
    built = build_indexes(_vectors(50, 8), _vectors(5, 8), tmp_path, k=5)
    specs = {k: b.spec for k, b in built.items()}
    with pytest.raises(ArtifactError, match="manifest says 60 x 8"):
        load_index(tmp_path, "ip", _manifest(60, 8, specs), use_gpu=False)
    (tmp_path / S.INDEX_COS).write_bytes(b"not a faiss index")
    with pytest.raises(ArtifactError, match="unreadable FAISS index"):
        load_index(tmp_path, "cosine", _manifest(50, 8, specs), use_gpu=False)


class _FakeGpuFaiss:
    """Stands in for faiss-gpu's entry points: no GPU can be had on CPU-only CI machines.

    The "GPU copy" is a real CPU clone, marked so the test can tell which copy answered; an index type
    listed in ``unsupported`` fails the copy the way faiss-gpu does for types without a GPU implementation.
    """

    def __init__(self, faiss_module: object, unsupported: tuple[str, ...] = ()) -> None:
        self.faiss, self.unsupported, self.copies = faiss_module, unsupported, []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(self.faiss, "StandardGpuResources", lambda: object(), raising=False)
        monkeypatch.setattr(self.faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(self.faiss, "index_cpu_to_gpu", self.to_gpu, raising=False)
        monkeypatch.setattr(self.faiss, "GpuParameterSpace", self.faiss.ParameterSpace, raising=False)

    def to_gpu(self, _res: object, device: int, index: object) -> object:
        if type(index).__name__ in self.unsupported:
            raise RuntimeError(f"{type(index).__name__} has no GPU implementation")
        copy = self.faiss.clone_index(index)
        self.copies.append((device, copy))
        return copy


def test_loader_moves_the_index_to_a_gpu_when_one_is_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    from mrdib.artifact import faiss_io

    items, users = _vectors(3000, 8), _vectors(10, 8, seed=1)  # more items than GPU_MAX_K
    built = build_indexes(items, users, tmp_path, factory="IVF4,Flat", k=10)
    m = _manifest(3000, 8, {k: b.spec for k, b in built.items()})
    fake = _FakeGpuFaiss(faiss)
    fake.install(monkeypatch)
    auto = load_index(tmp_path, "ip", m)  # automatic: a GPU is visible, so the index goes to GPU 0
    assert auto.on_gpu and auto.index is fake.copies[-1][1] and fake.copies[-1][0] == 0
    assert auto.index.nprobe == m.indexes["ip"].search_params["nprobe"]  # params applied to the GPU copy too
    # a k faiss-gpu refuses is served by the CPU copy, with the same answer
    calls: list[str] = []
    for name, idx in (("gpu", auto.index), ("cpu", auto.cpu_index)):
        real = idx.search
        monkeypatch.setattr(idx, "search", lambda q, k, _r=real, _n=name: calls.append(_n) or _r(q, k))
    auto.search(users, 10)
    auto.search(users, faiss_io.GPU_MAX_K + 1)
    assert calls == ["gpu", "cpu"]
    forced_cpu = load_index(tmp_path, "ip", m, use_gpu=False)
    assert not forced_cpu.on_gpu and len(fake.copies) == 1
    np.testing.assert_array_equal(forced_cpu.search(users, 10)[1], auto.search(users, 10)[1])


def test_loader_keeps_gpu_less_index_types_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    items, users = _vectors(300, 8), _vectors(10, 8, seed=1)
    built = build_indexes(items, users, tmp_path, factory="HNSW16", k=10)
    m = _manifest(300, 8, {k: b.spec for k, b in built.items()})
    _FakeGpuFaiss(faiss, unsupported=("IndexHNSWFlat",)).install(monkeypatch)
    auto = load_index(tmp_path, "ip", m)
    assert not auto.on_gpu and auto.index is auto.cpu_index
    with pytest.raises(RuntimeError, match="no GPU implementation"):
        load_index(tmp_path, "ip", m, use_gpu=True)  # asked for explicitly: the failure is not hidden


def test_loader_refuses_a_required_gpu_that_is_not_there(tmp_path: Path) -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible here")
    items, users = _vectors(50, 8), _vectors(5, 8, seed=1)
    built = build_indexes(items, users, tmp_path, factory=None, k=5)
    m = _manifest(50, 8, {k: b.spec for k, b in built.items()})
    with pytest.raises(ArtifactError, match="use_gpu=True but faiss has no GPU support"):
        load_index(tmp_path, "ip", m, use_gpu=True)
