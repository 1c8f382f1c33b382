"""Sparse graph helpers: block-wise kNN == dense reference, normalisation, training-only adjacency,
FREEDOM's degree-sensitive pruning and modality mixing."""

from __future__ import annotations

import pytest
import torch

from tests._models_helpers import make, planted_dataset
from training.data.dataset import TEST, TRAIN, VALID
from training.models.freedom import FreedomParams, modality_mix_weights
from training.models.graph import (
    SparseMatrix,
    knn_edges,
    knn_item_graph,
    mix_graphs,
    norm_adjacency,
    norm_interactions,
    sample_edges,
    unique_edges,
)


def dense_knn_reference(x: torch.Tensor, k: int, weighted: bool) -> torch.Tensor:
    """MMRec's dense construction: full similarity, top-k per row, D^-1/2 A D^-1/2 with row sums."""
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, idx = torch.topk(sim, k, dim=1)
    a = torch.zeros_like(sim).scatter_(1, idx, val if weighted else torch.ones_like(val))
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("block_size", [1, 6, 37, 1000, None])
def test_blockwise_knn_equals_dense_reference(weighted: bool, block_size: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=g) + 2.0  # shifted: top-k similarities are positive
    got = knn_item_graph(x, 4, weighted, block_size)
    assert got.nnz == 37 * 4
    torch.testing.assert_close(got.to_dense(), dense_knn_reference(x, 4, weighted), rtol=1e-5, atol=1e-6)


def test_knn_includes_self_clamps_k_and_survives_zero_rows() -> None:
    x = torch.randn(6, 3)
    x[2] = 0.0
    rows, _cols, sims = knn_edges(x, 50)  # k clamped to n
    assert rows.numel() == 36 and torch.isfinite(sims).all()
    nonzero = [r for r in range(6) if r != 2]
    top1 = knn_edges(x, 1)[1]
    assert all(int(top1[r]) == r for r in nonzero)  # self is its own nearest neighbour (as MMRec)
    assert torch.isfinite(knn_item_graph(x, 3, True).to_dense()).all()
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_edges(x, 0)


def test_norm_adjacency_matches_dense_and_dedupes() -> None:
    users = torch.tensor([0, 0, 1, 2, 2, 0])  # (0, 1) twice
    items = torch.tensor([1, 3, 1, 0, 2, 1])
    u, i = unique_edges(users, items, 3, 4)
    assert u.numel() == 5
    adj = norm_adjacency(u, i, 3, 4).to_dense()
    a = torch.zeros(7, 7)
    a[u, i + 3] = 1.0
    a[i + 3, u] = 1.0
    d = a.sum(1).clamp_min(1e-12).pow(-0.5)
    torch.testing.assert_close(adj, d[:, None] * a * d[None, :])
    torch.testing.assert_close(norm_interactions(u, i, 3, 4).to_dense(), adj[:3, 3:])
    with pytest.raises(ValueError, match="item rows"):
        unique_edges(torch.tensor([0]), torch.tensor([4]), 3, 4)


@pytest.mark.parametrize("name", ["lightgcn", "freedom", "mgcn"])
def test_adjacency_uses_training_interactions_only(name: str) -> None:
    ds = planted_dataset(("image", "text"))
    model, _ = make(name, ds)
    adj = model.full_adj if name == "freedom" else model.adj
    idx = adj.indices()
    ui = idx[:, idx[0] < ds.n_users]
    got = set(zip(ui[0].tolist(), (ui[1] - ds.n_users).tolist(), strict=True))
    train = set(zip(*(a.tolist() for a in ds.split_pairs(TRAIN)), strict=True))
    held_out = {p for s in (VALID, TEST) for p in zip(*(a.tolist() for a in ds.split_pairs(s)), strict=True)}
    assert got == train
    assert not (got & (held_out - train))
    if name == "mgcn":
        r = model.R.indices()
        assert set(zip(r[0].tolist(), r[1].tolist(), strict=True)) == train


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.8])
def test_freedom_pruning_keeps_configured_fraction(dropout: float) -> None:
    ds = planted_dataset(("image", "text"))
    model, _ = make("freedom", ds, dropout=dropout)
    n_edges = model.edge_users.numel()
    model.on_epoch_start(0)
    first = model.masked_adj
    assert first.nnz == 2 * int(n_edges * (1 - dropout))
    if dropout == 0.0:
        assert first is model.full_adj
        return
    # Kept edges are training edges, renormalised by their degrees in the pruned graph.
    idx = first.indices()
    ui = idx[:, idx[0] < ds.n_users]
    ku, ki = ui[0], ui[1] - ds.n_users
    torch.testing.assert_close(first.to_dense(), norm_adjacency(ku, ki, ds.n_users, ds.n_items).to_dense())
    full = set(zip(model.edge_users.tolist(), model.edge_items.tolist(), strict=True))
    assert set(zip(ku.tolist(), ki.tolist(), strict=True)) <= full
    model.on_epoch_start(1)
    assert not torch.equal(model.masked_adj.indices(), first.indices())  # resampled every epoch


def test_sample_edges_matches_weighted_sampling_without_replacement() -> None:
    torch.manual_seed(0)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    trials = 4000
    ours = torch.zeros(4)
    ref = torch.zeros(4)
    for _ in range(trials):
        pick = sample_edges(w, 2)
        assert pick.unique().numel() == 2
        ours[pick] += 1
        ref[torch.multinomial(w, 2)] += 1
    torch.testing.assert_close(ours / trials, ref / trials, atol=0.04, rtol=0.0)
    assert ours[3] > ours[0] * 2  # heavier (low-degree) edges are kept more often
    with pytest.raises(ValueError, match="n_keep"):
        sample_edges(w, 5)


def test_sample_edges_is_reproducible() -> None:
    w = torch.rand(1000) + 0.1
    torch.manual_seed(3)
    a = sample_edges(w, 100)
    torch.manual_seed(3)
    assert torch.equal(a, sample_edges(w, 100))


def test_modality_mix_weights() -> None:
    p = FreedomParams()
    assert modality_mix_weights(["image", "text"], p) == pytest.approx([0.1, 0.9])
    assert modality_mix_weights(["text", "image"], p) == pytest.approx([0.9, 0.1])
    assert modality_mix_weights(["meta", "text"], p) == pytest.approx([0.5, 0.5])
    assert modality_mix_weights(["image", "text", "meta"], p) == pytest.approx([1 / 3] * 3)
    explicit = FreedomParams(modality_weights={"meta": 1.0, "text": 3.0})
    assert modality_mix_weights(["meta", "text"], explicit) == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="modality_weights"):
        modality_mix_weights(["image", "text"], explicit)


def test_mix_graphs_is_weighted_sum() -> None:
    x = torch.randn(10, 4)
    y = torch.randn(10, 6)
    ga, gb = knn_item_graph(x, 3, False), knn_item_graph(y, 3, False)
    mixed = mix_graphs([ga, gb], [0.1, 0.9])
    torch.testing.assert_close(mixed.to_dense(), 0.1 * ga.to_dense() + 0.9 * gb.to_dense())
    ds = planted_dataset(("meta", "text"))
    model, ctx = make("freedom", ds)
    ref = mix_graphs([knn_item_graph(ctx.features[m], 10, False) for m in ("meta", "text")], [0.5, 0.5])
    torch.testing.assert_close(model.mm_adj.to_dense(), ref.to_dense())


@pytest.mark.parametrize("symmetric", [False, True])
def test_sparse_matrix_mm_forward_and_gradient_match_dense(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(1)
    dense = torch.rand(9, 9, generator=g) * (torch.rand(9, 9, generator=g) < 0.3)
    if symmetric:
        dense = dense + dense.T
    m = SparseMatrix(dense.to_sparse(), symmetric=symmetric)
    x = torch.randn(9, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g)
    (m.mm(x) * w).sum().backward()
    torch.testing.assert_close(m.mm(x.detach()), dense @ x.detach())
    torch.testing.assert_close(x.grad, dense.T @ w)
