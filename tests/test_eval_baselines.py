"""Reference baselines end to end on tiny planted datasets, plus their building blocks and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._eval_helpers import make_dataset, planted_clusters
from training.baselines import (
    BPRMF,
    BPRConfig,
    ItemKNN,
    ItemKNNConfig,
    MostPopular,
    NegativeSampler,
    knn_graph,
    select_on_validation,
)
from training.data.dataset import TEST, TRAIN, VALID
from training.evaluation import evaluate

FAST_BPR = {"dim": 16, "lr": 0.02, "reg": 1e-4, "batch_size": 256, "max_epochs": 40, "patience": 5}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (25x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clusters():
    return planted_clusters()


@pytest.fixture(scope="module")
def fitted_bpr(clusters):
    return BPRMF(BPRConfig(seed=7, **FAST_BPR)).fit(clusters)


def test_most_popular_ranks_the_popular_item_first() -> None:
    # item 3 has 4 training interactions, item 1 has 2, the rest at most 1; user 4 has a test item.
    triples = [(u, 3, TRAIN) for u in range(4)] + [(0, 1, TRAIN), (1, 1, TRAIN), (2, 0, TRAIN), (4, 2, TRAIN)]
    triples += [(4, 3, TEST), (0, 4, TEST), (0, 0, VALID)]
    ds = make_dataset(triples, n_users=5, n_items=6)
    pop = MostPopular().fit(ds)
    s = pop.score(torch.tensor([0, 4]))
    assert s.shape == (2, 6)
    assert s.argmax(dim=1).tolist() == [3, 3]
    r = evaluate(pop.score, ds, TEST, ks=(1,))
    # user 0 (items 3 and 1 masked: trained) gets item 0 or 2 (count 1), a miss; user 4 gets item 3, a hit.
    assert r["recall@1"] == pytest.approx(0.5)
    # counts 1,2,1,4,0,0 -> percentiles: items 0/2 (3.5-1)/5 = 0.5, item 3 (6-1)/5 = 1.0
    assert r["popularity@1"] == pytest.approx((0.5 + 1.0) / 2)


def test_bpr_learns_planted_clusters(clusters, fitted_bpr) -> None:
    r = evaluate(fitted_bpr.score, clusters, TEST, ks=(10,))
    random_recall = 10 / clusters.n_items  # about 0.05 for 200 items
    assert r["recall@10"] > 3 * random_recall, r
    assert fitted_bpr.best_epoch >= 1
    assert fitted_bpr.history, "validation history must be recorded"
    # the restored parameters are those of the best validation epoch
    assert evaluate(fitted_bpr.score, clusters, VALID, ks=(10, 20, 50))["recall@20"] == pytest.approx(
        fitted_bpr.best_valid
    )


def test_bpr_is_reproducible_with_a_seed(clusters, fitted_bpr) -> None:
    cfg = {**FAST_BPR, "max_epochs": 3, "patience": 10}
    a = BPRMF(BPRConfig(seed=7, **cfg)).fit(clusters)
    b = BPRMF(BPRConfig(seed=7, **cfg)).fit(clusters)
    c = BPRMF(BPRConfig(seed=8, **cfg)).fit(clusters)
    assert torch.equal(a.user_emb, b.user_emb) and torch.equal(a.item_emb, b.item_emb)
    assert not torch.equal(a.item_emb, c.item_emb)


def test_negative_sampler_never_returns_a_training_item() -> None:
    gen = torch.Generator().manual_seed(0)
    users = torch.tensor([0, 0, 0, 1, 2, 2])
    items = torch.tensor([0, 1, 2, 3, 0, 4])
    sampler = NegativeSampler(users, items, n_items=5, generator=gen)
    u = torch.tensor([0] * 2000 + [1] * 2000 + [2] * 2000)
    neg = sampler.sample(u)
    trained = set(zip(users.tolist(), items.tolist(), strict=True))
    assert not any(pair in trained for pair in zip(u.tolist(), neg.tolist(), strict=True))
    counts0 = np.bincount(neg[:2000].numpy(), minlength=5)
    assert counts0[:3].sum() == 0 and min(counts0[3:]) > 800  # uniform over items 3, 4
    with pytest.raises(ValueError, match="every item"):
        NegativeSampler(torch.tensor([0, 0]), torch.tensor([0, 1]), n_items=2, generator=gen)


def test_knn_graph_blockwise_equals_dense_top_k() -> None:
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(37, 6)), dtype=torch.float32)
    x = x / x.norm(dim=1, keepdim=True)
    g = knn_graph(x, k=4, block_scores=37 * 3)  # 3 items per block: 13 blocks
    dense = (x @ x.T).numpy()
    np.fill_diagonal(dense, -np.inf)
    for i in range(37):
        top = np.argsort(-dense[i])[:4]
        want = {int(j): dense[i, j] for j in top if dense[i, j] > 0}
        row = g.getrow(i)
        got = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        assert got.keys() == want.keys()
        for j, v in want.items():
            assert got[j] == pytest.approx(v, abs=1e-6)
    assert g.getnnz(axis=1).max() <= 4


def test_itemknn_finds_planted_content_clusters(clusters) -> None:
    knn = ItemKNN(ItemKNNConfig(k=20)).fit(clusters)
    r = evaluate(knn.score, clusters, TEST, ks=(10,))
    assert r["recall@10"] > 3 * 10 / clusters.n_items, r
    # two identical modalities: concat (mean of cosines) and mean-of-graphs agree
    feats = {"a": clusters.features["content"], "b": clusters.features["content"].copy()}
    twin = make_dataset(list(zip(clusters.users, clusters.items, clusters.splits, strict=True)), 200, 200, feats)
    s1 = ItemKNN(ItemKNNConfig(k=20, combine="concat")).fit(twin).score(torch.arange(5))
    s2 = ItemKNN(ItemKNNConfig(k=20, combine="mean")).fit(twin).score(torch.arange(5))
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no modality"):
        ItemKNN(ItemKNNConfig(modalities=["image"])).fit(clusters)


def test_selection_uses_validation_only(clusters) -> None:
    res = select_on_validation("itemknn", clusters, grid=[{"k": 1}, {"k": 20}], ks=(10, 20))
    assert len(res.candidates) == 2
    best = max(res.candidates, key=lambda c: c.valid["recall@20"])
    assert res.params == best.params and res.valid == best.valid
    assert set(res.test) == set(res.valid)


def test_cli_baseline_writes_report(tmp_path, clusters) -> None:
    from mrdib.cli import app

    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    rows += [f"{u}\t{i}\t1\t0\t{s}" for u, i, s in zip(clusters.users, clusters.items, clusters.splits, strict=True)]
    (folder / "tiny.inter").write_text("\n".join(rows) + "\n")
    np.save(folder / "content_feat.npy", clusters.features["content"])
    out = tmp_path / "pop.json"
    res = CliRunner().invoke(app, ["baseline", "--data", str(folder), "--model", "pop", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "recall@20" in res.output
    report = json.loads(out.read_text())
    assert report["model"] == "pop" and report["test"]["n_users"] == clusters.n_users
    res = CliRunner().invoke(
        app, ["baseline", "--data", str(folder), "--model", "bpr", "--max-epochs", "2", "--ks", "5,10", "--dim", "8"]
    )
    assert res.exit_code == 0, res.output
    assert "recall@10" in res.output and "best epoch" in res.output
