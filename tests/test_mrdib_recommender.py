"""Recommender: bit-for-bit the plain backbone with MRdIB off; MRdIB on learns on planted data."""

from __future__ import annotations

import pytest
import torch

from tests._mrdib_helpers import batch, config, make, planted, train
from training.models.base import ModelContext
from training.models.recommender import Recommender, build_recommender
from training.models.registry import build_backbone


@pytest.fixture(scope="module")
def ds():
    return planted(("image", "text"))


def _run_bare(backbone, ctx: ModelContext, steps: int) -> list[torch.Tensor]:
    opt = torch.optim.Adam(backbone.parameters(), lr=0.01)
    losses = []
    backbone.train()
    for step in range(steps):
        backbone.on_epoch_start(step)
        users, pos, neg = batch(ctx, seed=step)
        u, i = backbone.propagate()
        total = sum(backbone.loss(users, pos, neg, u, i).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.detach())
    return losses


def _run_recommender(model: Recommender, ctx: ModelContext, steps: int) -> list[torch.Tensor]:
    opt = torch.optim.Adam(model.main_parameters(), lr=0.01)
    losses = []
    model.train()
    for step in range(steps):
        model.on_epoch_start(step)
        out = model(*batch(ctx, seed=step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert model.aux_loss(*batch(ctx, seed=step)) is None
        losses.append(out["loss"].detach())
    return losses


@pytest.mark.parametrize("name", ["bpr", "lightgcn", "freedom"])
def test_mrdib_off_is_bit_for_bit_the_plain_backbone(ds, name: str) -> None:
    ctx = ModelContext.from_dataset(ds)
    cfg = config(name, enabled=False)
    torch.manual_seed(11)
    bare = build_backbone(ctx, cfg.backbone)
    bare_losses = _run_bare(bare, ctx, steps=6)
    rng_after_bare = torch.get_rng_state()

    torch.manual_seed(11)
    model = build_recommender(cfg, ctx)
    assert model.mrdib is None and model.aux_parameters() == []
    rec_losses = _run_recommender(model, ctx, steps=6)
    assert torch.equal(torch.get_rng_state(), rng_after_bare), "different random-number consumption"

    for a, b in zip(bare_losses, rec_losses, strict=True):
        assert torch.equal(a, b)
    bare_state = bare.state_dict()
    rec_state = model.state_dict()
    assert set(rec_state) == {f"backbone.{k}" for k in bare_state}
    for k, v in bare_state.items():
        assert torch.equal(v, rec_state[f"backbone.{k}"]), k
    u0, i0 = model.embeddings()
    bare.eval()
    with torch.no_grad():
        u1, i1 = bare.propagate()
    assert torch.equal(u0, u1) and torch.equal(i0, i1)
    assert list(model.export().components) == ["collaborative"]


def test_explicit_none_equals_disabled_config(ds) -> None:
    ctx = ModelContext.from_dataset(ds)
    cfg = config("bpr", enabled=False)
    torch.manual_seed(1)
    a = Recommender(build_backbone(ctx, cfg.backbone), ctx, None)
    torch.manual_seed(1)
    b = Recommender(build_backbone(ctx, cfg.backbone), ctx, cfg.mrdib)
    assert a.mrdib is None and b.mrdib is None
    users, pos, neg = batch(ctx)
    assert torch.equal(a(users, pos, neg)["loss"], b(users, pos, neg)["loss"])


def test_plugin_does_not_change_the_backbone_initialisation(ds) -> None:
    """The backbone is built before the plug-in: its initial weights match a plain run with the same seed."""
    plain, _ = make(ds, enabled=False, seed=4)
    with_plugin, _ = make(ds, enabled=True, seed=4)
    for (n1, p1), (n2, p2) in zip(
        plain.backbone.named_parameters(), with_plugin.backbone.named_parameters(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("backbone", ["bpr", "freedom"])
def test_short_training_on_planted_data_decreases_the_total_loss(ds, backbone: str) -> None:
    model, ctx = make(ds, backbone=backbone, seed=2)
    losses = train(model, ctx, steps=60, lr=0.003)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    # and the trained item vectors rank a user's training items above random items
    u, i = model.embeddings()
    scores = u @ i.T
    users, pos, neg = batch(ctx, n=512, seed=999)
    auc = (scores[users, pos] > scores[users, neg]).float().mean()
    assert auc > 0.75, float(auc)


def test_same_seed_same_training_with_mrdib_on(ds) -> None:
    a, ctx = make(ds, seed=6)
    b, _ = make(ds, seed=6)
    torch.manual_seed(0)
    la = train(a, ctx, steps=5)
    torch.manual_seed(0)
    lb = train(b, ctx, steps=5)
    assert la == lb
