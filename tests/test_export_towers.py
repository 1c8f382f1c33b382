"""User/item towers: history layout, fitting, and ONNX files that compute what torch computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _export_helpers import N_ITEMS, write_tiny_checkpoint, write_tiny_mmrec

from training import checkpoint as ckpt
from training.data.dataset import InteractionDataset
from training.data.mmrec import load_mmrec
from training.export.onnx_export import (
    OPSET,
    check_item_tower,
    check_user_tower,
    export_item_tower,
    export_user_tower,
    random_history_batches,
)
from training.export.towers import (
    PAD,
    TowerFitConfig,
    UserTower,
    fit_item_tower,
    fit_user_tower,
    item_tower_vectors,
    user_histories,
    user_tower_vectors,
)

MAX_H = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[InteractionDataset, ckpt.Embeddings]:
    root = tmp_path_factory.mktemp("towers")
    data = write_tiny_mmrec(root / "data")
    c = write_tiny_checkpoint(root / "ckpt", data)
    return load_mmrec(data), ckpt.load_embeddings(c)


@pytest.fixture(scope="module")
def user_tower(tiny) -> UserTower:
    ds, emb = tiny
    return fit_user_tower(user_histories(ds, MAX_H), emb.user, emb.item, MAX_H, TowerFitConfig(epochs=20))


def _toy_dataset() -> InteractionDataset:
    # user 0: items 3 (t=5), 1 (t=9), 2 (t=7), 4 (valid); user 1: nothing in train but item 0 in test
    return InteractionDataset(
        name="toy",
        users=np.array([0, 0, 0, 0, 1], np.int64),
        items=np.array([3, 1, 2, 4, 0], np.int64),
        timestamps=np.array([5, 9, 7, 10, 1], np.int64),
        splits=np.array([0, 0, 0, 1, 2], np.int8),
        user_ids=["a", "b"],
        item_ids=[str(i) for i in range(5)],
        features={"x": np.zeros((5, 2), np.float32)},
    )


def test_histories_are_most_recent_first_and_padded() -> None:
    h = user_histories(_toy_dataset(), max_history=4)
    assert h.dtype == np.int64 and h.shape == (2, 4)
    assert h[0].tolist() == [1, 2, 3, PAD]  # valid-split item 4 excluded, newest first
    assert h[1].tolist() == [PAD] * 4
    assert user_histories(_toy_dataset(), max_history=2)[0].tolist() == [1, 2]  # truncation keeps the newest


def test_user_tower_masks_padding_and_accepts_any_length() -> None:
    rng = np.random.default_rng(0)
    tower = UserTower(rng.standard_normal((10, 4)).astype(np.float32), max_history=6).eval()
    with torch.no_grad():
        a = tower(torch.tensor([[3, 5, PAD, PAD, PAD, PAD]]))
        b = tower(torch.tensor([[3, 5]]))
        c = tower(torch.tensor([[3, 5, 10, 99]]))  # out-of-range rows are ignored like padding
        empty = tower(torch.full((2, 3), PAD))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert torch.isfinite(empty).all()


def test_user_tower_reproduces_learned_vectors(tiny, user_tower: UserTower) -> None:
    ds, emb = tiny
    hist = user_histories(ds, MAX_H)
    out = user_tower_vectors(user_tower, hist)
    rel_mse = ((out - emb.user) ** 2).sum(1).mean() / (emb.user**2).sum(1).mean()
    # the mean user vector is the trivial baseline (rel. MSE ~ 1); the tower must do much better
    assert rel_mse < 0.5, rel_mse
    # the item vectors are frozen inside the tower
    np.testing.assert_array_equal(user_tower.table[:-1].numpy(), emb.item)


def test_user_tower_onnx_matches_torch(tiny, user_tower: UserTower, tmp_path: Path) -> None:
    ds, _ = tiny
    path = export_user_tower(user_tower, tmp_path / "user_tower.onnx")
    model = onnx.load(str(path))
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == ["history"]  # item vectors are a constant, not an input
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "length"]
    real = user_histories(ds, MAX_H)
    batches = [*random_history_batches(N_ITEMS, MAX_H, seed=3), real, real[:7, :4], real[:1, :1]]
    assert check_user_tower(user_tower, path, batches) <= 1e-5


def test_item_tower_fits_and_onnx_matches_torch(tiny, tmp_path: Path) -> None:
    ds, emb = tiny
    rows = np.arange(ds.n_items)
    tower = fit_item_tower(ds.features, emb.item, rows, emb.user, ds.split_pairs(0), TowerFitConfig(epochs=20))
    pred = item_tower_vectors(tower, ds.features)
    rel_mse = ((pred - emb.item) ** 2).sum(1).mean() / ((emb.item - emb.item.mean(0)) ** 2).sum(1).mean()
    assert rel_mse < 0.8, rel_mse  # features carry the latent factors: clearly better than the mean item
    path = export_item_tower(tower, tmp_path / "item_tower.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == list(ds.features)  # one input per modality, by name
    rng = np.random.default_rng(1)
    batches = [
        {m: x[:1] for m, x in ds.features.items()},
        {m: x for m, x in ds.features.items()},
        {m: rng.standard_normal((33, x.shape[1])).astype(np.float32) for m, x in ds.features.items()},
    ]
    assert check_item_tower(tower, path, batches) <= 1e-5


def test_item_tower_ignores_constant_feature_dimensions() -> None:
    from training.export.towers import ItemTower, feature_stats, inverse_std

    std = np.array([0.0, 1e-9, 0.5, 1e-5, 2.0], np.float32)
    inv = inverse_std(std)
    assert inv[0] == 0 and inv[1] == 0  # constant over the training items: no weight
    assert inv[2] == pytest.approx(2.0) and inv[4] == pytest.approx(0.5)
    assert inv[3] == pytest.approx(1 / (0.01 * std[2:].mean()), rel=1e-4)  # floored, not 1e5
    # a cold item that differs from all trained items in a constant dimension stays finite and bounded
    x = np.zeros((50, 3), np.float32)
    x[:, 1] = np.random.default_rng(0).standard_normal(50)
    tower = ItemTower(feature_stats({"m": x}), dim=4).eval()
    with torch.no_grad():
        a = tower(torch.tensor([[0.0, 0.3, 0.0]]))
        b = tower(torch.tensor([[1000.0, 0.3, -1000.0]]))
    torch.testing.assert_close(a, b)


def test_onnx_parity_on_shared_movielens_histories(shared_data: Path, tmp_path: Path) -> None:
    """Real histories (ml-100k-mm, 943 users x 50 items) through a briefly fitted tower, torch vs ONNX."""
    folder = shared_data / "ml-100k-mm"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    ds = load_mmrec(folder)
    rng = np.random.default_rng(0)
    items = rng.standard_normal((ds.n_items, 32)).astype(np.float32)
    users = rng.standard_normal((ds.n_users, 32)).astype(np.float32)
    hist = user_histories(ds, 50)
    tower = fit_user_tower(hist, users, items, 50, TowerFitConfig(epochs=1))
    path = export_user_tower(tower, tmp_path / "u.onnx")
    assert check_user_tower(tower, path, [hist, hist[:100, :10], hist[:1]]) <= 1e-5
    feats = {m: x[:300] for m, x in ds.features.items()}
    itower = fit_item_tower(ds.features, items, np.arange(ds.n_items), cfg=TowerFitConfig(epochs=1, bpr_weight=0))
    ipath = export_item_tower(itower, tmp_path / "i.onnx")
    assert check_item_tower(itower, ipath, [feats, {m: x[:1] for m, x in feats.items()}]) <= 1e-5
