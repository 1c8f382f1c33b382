"""The plug-in's content paths and training knobs of issue 11: content before propagation, exact propagated
components, ID dropout, normalised auxiliary terms, the log-cosh synergy penalty, PCA inputs, plug-in weight
decay, and VBPR's MMRec-style regularisation."""

from __future__ import annotations

import math

import pytest
import torch
from _mrdib_helpers import batch, make, planted

from training.config import BackboneConfig
from training.models.base import ModelContext
from training.models.mrdib import _synergy_penalty, principal_axes
from training.models.registry import build_backbone

GRAPH = ("lightgcn", "freedom", "mgcn")


@pytest.fixture(scope="module")
def ds():
    return planted()


@pytest.mark.parametrize("backbone", GRAPH)
def test_content_before_propagation_reaches_users_and_components_add_up(ds, backbone: str) -> None:
    model, _ctx = make(ds, backbone, content_at="ego", init_scale=1.0)
    out, _ = make(ds, backbone, content_at="output", init_scale=1.0)
    out.load_state_dict(model.state_dict())
    assert model.content_before_propagation and not out.content_before_propagation
    u_ego, i_ego = model.embeddings()
    u_out, _ = out.embeddings()
    # the ID-only user vectors are the same; content before propagation moves every user with content
    assert not torch.allclose(u_ego, u_out, atol=1e-4)
    emb = model.export()
    total = sum(emb.components.values())
    torch.testing.assert_close(torch.as_tensor(total), torch.as_tensor(emb.item), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(emb.item), i_ego, atol=1e-5, rtol=0)
    assert next(iter(emb.components)) == "collaborative" and "shared" in emb.components


@pytest.mark.parametrize("backbone", ("lightgcn", "freedom"))
def test_propagation_is_linear_in_the_item_input(ds, backbone: str) -> None:
    ctx = ModelContext.from_dataset(ds)
    torch.manual_seed(0)
    bb = build_backbone(ctx, BackboneConfig(name=backbone, embedding_dim=8)).eval()  # type: ignore[arg-type]
    extra = torch.randn(ctx.n_items, 8)
    with torch.no_grad():
        u0, i0 = bb.propagate()
        u1, i1 = bb.propagate(item_extra=extra)
        ue, ie = bb.propagate_extra(extra)
    torch.testing.assert_close(u1, u0 + ue, atol=1e-5, rtol=0)
    torch.testing.assert_close(i1, i0 + ie, atol=1e-5, rtol=0)


def test_ego_training_steps_and_gradients_reach_the_encoders(ds) -> None:
    for backbone in GRAPH:
        model, ctx = make(ds, backbone, content_at="ego")
        out = model(*batch(ctx))
        out["loss"].backward()
        assert math.isfinite(out["loss"].item())
        assert model.mrdib.encoders[0].hidden.weight.grad.abs().sum() > 0


def test_id_dropout_makes_content_rank_the_dropped_items_alone(ds) -> None:
    model, ctx = make(ds, "bpr", id_dropout=0.999, content_reg=0.0)
    model.backbone.cfg = model.backbone.cfg.model_copy(update={"reg_weight": 0.0})  # only the ranking terms
    users, pos, neg = batch(ctx)
    torch.manual_seed(0)
    model(users, pos, neg)["loss"].backward()
    # every batch item's ID row was zeroed before scoring: the BPR term gives its ID vector no gradient
    grad = model.backbone.item_emb.grad
    assert grad is None or grad[torch.cat([pos, neg])].abs().sum() == 0
    model.eval()  # never at evaluation
    assert model._dropped_ids(torch.arange(5)) is None


def test_normalised_terms_start_near_their_chance_scale(ds) -> None:
    model, ctx = make(ds, "bpr", normalize_terms=True, contrastive_max=64)
    terms = model(*batch(ctx, n=64))
    for name in ("mrdib_suf", "mrdib_uni", "mrdib_red_nce", "mrdib_syn_bpr"):
        assert 0.5 < float(terms[name]) < 1.6, (name, float(terms[name]))  # ~1 when nothing is learnt yet
    assert 0.0 <= float(terms["mrdib_red_dep"]) <= 1.0
    raw, _ = make(ds, "bpr", normalize_terms=False, contrastive_max=64)
    assert float(raw(*batch(ctx, n=64))["mrdib_uni"]) > 2.0 * float(terms["mrdib_uni"])


def test_log_cosh_synergy_penalty_keeps_its_gradient_at_large_margins() -> None:
    m = torch.tensor([0.0, 0.5, 8.0, -8.0], requires_grad=True)
    _synergy_penalty(m, "logcosh").sum().backward()
    torch.testing.assert_close(m.grad, torch.tanh(m.detach()))
    assert abs(float(m.grad[2])) > 0.99
    s = torch.tensor([8.0], requires_grad=True)
    _synergy_penalty(s, "sigmoid_sq").sum().backward()
    assert abs(float(s.grad[0])) < 1e-3  # the old penalty: vanished
    big = torch.tensor([1e4])
    assert torch.isfinite(_synergy_penalty(big, "logcosh")).all()


def test_pca_inputs_are_the_catalogue_s_principal_coordinates(ds) -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 3) @ torch.randn(3, 30) + 0.01 * torch.randn(200, 30)
    axes = principal_axes(x, 3)
    torch.testing.assert_close(axes.T @ axes, torch.eye(3), atol=1e-5, rtol=0)
    centred = x - x.mean(0)
    torch.testing.assert_close(centred @ axes @ axes.T, centred, atol=0.05, rtol=0)  # 3 axes hold it all
    model, _ = make(ds, "bpr", input_pca=4)
    for m, enc, inputs in zip(model.mrdib.modalities, model.mrdib.encoders, model.mrdib._features, strict=True):
        raw = model.mrdib.raw_features[m]
        assert raw.shape[1] > 4 and inputs.shape[1] == 4 and enc.in_dim == enc.hidden.in_features == 4
        torch.testing.assert_close(inputs, raw @ principal_axes(raw, 4))
    assert make(ds, "bpr", input_pca=64)[0].mrdib._features[0].shape[1] == ds.feature_dims["image"]  # not wider


def test_plugin_weight_decay_is_its_own_parameter_group(ds) -> None:
    model, _ = make(ds, "bpr", weight_decay=1e-3)
    groups = model.param_groups(1e-5)
    assert [g["weight_decay"] for g in groups] == [1e-5, 1e-5 + 1e-3]
    plugin = {id(p) for p in groups[1]["params"]}
    assert id(model.mrdib.encoders[0].hidden.weight) in plugin and id(model.backbone.item_emb) not in plugin
    assert len(model.param_groups(0.0)) == 2 and len(make(ds, "bpr")[0].param_groups(0.0)) == 1


def test_vbpr_mmrec_regularisation_covers_the_content_projection(ds) -> None:
    ctx = ModelContext.from_dataset(ds)
    users, pos, neg = batch(ctx)
    for params, touches_proj in (({}, False), ({"reg_on": "full", "reg_form": "norm"}, True)):
        torch.manual_seed(0)
        cfg = BackboneConfig(name="vbpr", embedding_dim=16, reg_weight=1.0, params=params)
        bb = build_backbone(ctx, cfg)
        bb.loss(users, pos, neg, *bb.propagate())["reg"].backward()
        assert (bb.proj.weight.grad is not None and bb.proj.weight.grad.abs().sum() > 0) == touches_proj
