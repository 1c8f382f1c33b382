"""MRdIB plug-in: every term's switch, the loss composition, gradients, components, export, interventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests._mrdib_helpers import DIM, batch, make, planted, train
from training.checkpoint import load_embeddings, save_embeddings

TERMS = {
    "use_ib": {"mrdib_suf", "mrdib_kl"},
    "use_unique": {"mrdib_uni", "mrdib_uni_cond"},
    "use_redundant": {"mrdib_red_nce", "mrdib_red_dep"},
    "use_synergy": {"mrdib_syn_bpr", "mrdib_syn_mask"},
}
ALL_TERMS = set().union(*TERMS.values())
WEIGHTED = ALL_TERMS | {"mrdib_creg"}  # + the content L2 (on whenever content_reg > 0, whatever the switches)



@pytest.fixture(scope="module")
def ds2():
    return planted(("image", "text"))


@pytest.fixture(scope="module")
def ds3():
    return planted(("image", "text", "meta"))


def _weights(model) -> dict[str, float]:
    c = model.mrdib.cfg
    return {
        "mrdib_suf": c.lambda_ib,
        "mrdib_creg": c.content_reg,
        "mrdib_kl": c.beta,
        "mrdib_uni": c.lambda_u,
        "mrdib_uni_cond": c.lambda_u,
        "mrdib_red_nce": c.lambda_r,
        "mrdib_red_dep": c.lambda_r * c.dependence_weight,
        "mrdib_syn_bpr": c.lambda_s,
        "mrdib_syn_mask": c.lambda_s,
    }


def test_all_terms_present_and_total_is_the_documented_sum(ds2) -> None:
    model, ctx = make(ds2, lambda_u=0.3, lambda_r=0.05, lambda_s=0.7, beta=0.01, dependence_weight=2.0)
    out = model(*batch(ctx))
    assert set(out) >= ALL_TERMS
    backbone = out["bpr"] + out["reg"]
    expected = backbone + sum(w * out[k] for k, w in _weights(model).items() if k in out)
    torch.testing.assert_close(out["loss"], expected)
    for k, v in out.items():
        assert v.ndim == 0 and torch.isfinite(v), k


@pytest.mark.parametrize("switch", list(TERMS))
def test_switching_a_term_off_removes_its_terms_and_modules(ds2, switch: str) -> None:
    on, ctx = make(ds2, redundancy_estimator="club")
    off, _ = make(ds2, redundancy_estimator="club", **{switch: False})
    users, pos, neg = batch(ctx)
    out_on, out_off = on(users, pos, neg), off(users, pos, neg)
    assert TERMS[switch] <= set(out_on)
    assert not TERMS[switch] & set(out_off)
    assert ALL_TERMS - TERMS[switch] <= set(out_off)
    # its modules are not built (no parameter DDP would see as unused)
    names = {n for n, _ in off.named_parameters()}
    module_of = {
        "use_ib": ("sufficiency_heads", "encoders.0.sigma"),
        "use_unique": ("cond_query", "cond_key"),
        "use_redundant": ("club_",),
        "use_synergy": ("mrdib.synergy.", "proj_synergy"),
    }[switch]
    assert not [n for n in names if any(frag in n for frag in module_of)]
    assert any(any(frag in n for frag in module_of) for n, _ in on.named_parameters())
    # the remaining total is still backbone + the weighted terms that are on
    backbone = out_off["bpr"] + out_off["reg"]
    w = _weights(off)
    torch.testing.assert_close(out_off["loss"], backbone + sum(w[k] * out_off[k] for k in WEIGHTED & set(out_off)))
    if switch == "use_synergy":
        assert "synergy" not in off.export().components
    if switch == "use_redundant":
        assert off.aux_parameters() == [] and off.aux_loss(users, pos, neg) is None
    else:
        assert off.aux_parameters()


def test_all_terms_off_leaves_backbone_loss_plus_content(ds2) -> None:
    model, ctx = make(ds2, use_ib=False, use_unique=False, use_redundant=False, use_synergy=False)
    out = model(*batch(ctx))
    assert set(out) == {"loss", "bpr", "reg"}
    torch.testing.assert_close(out["loss"], out["bpr"] + out["reg"])
    assert model.aux_loss(*batch(ctx)) is None
    # without IB the code is the deterministic encoder output: training == eval
    items = torch.arange(ds2.n_items)
    st_train = model.mrdib.encode(items, sample=True)
    st_eval = model.mrdib.encode(items, sample=False)
    assert all(torch.equal(a, b) for a, b in zip(st_train.z, st_eval.z, strict=True))


def test_weights_scale_their_terms(ds2) -> None:
    """Same seed, same batch: raising lambda_s moves the total by exactly the extra weighted synergy terms."""
    a, ctx = make(ds2, lambda_s=0.1)
    b, _ = make(ds2, lambda_s=1.1)
    users, pos, neg = batch(ctx)
    torch.manual_seed(9)
    out_a = a(users, pos, neg)
    torch.manual_seed(9)
    out_b = b(users, pos, neg)
    syn = out_a["mrdib_syn_bpr"] + out_a["mrdib_syn_mask"]
    torch.testing.assert_close(out_b["loss"] - out_a["loss"], 1.0 * syn, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_main_parameter_and_no_aux_parameter(ds2) -> None:
    model, ctx = make(ds2)
    model(*batch(ctx))["loss"].backward()
    aux = {id(p) for p in model.aux_parameters()}
    assert aux, "CLUB estimators expected with the default redundancy_estimator"
    for name, p in model.named_parameters():
        if id(p) in aux:
            assert p.grad is None, f"main loss wrote a gradient into CLUB parameter {name}"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    enc_grad = model.mrdib.encoders[0].hidden.weight.grad
    assert enc_grad.abs().sum() > 0


def test_aux_step_updates_only_aux_parameters(ds2) -> None:
    model, ctx = make(ds2)
    users, pos, neg = batch(ctx)
    model(users, pos, neg)  # fills the cache that aux_loss reuses
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    aux_params = model.aux_parameters()
    opt = torch.optim.Adam(aux_params, lr=0.01)
    loss = model.aux_loss(users, pos, neg)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    opt.step()
    aux = {id(p) for p in aux_params}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the CLUB step changed nothing"
    for n, p in model.named_parameters():
        if id(p) not in aux:
            assert p.grad is None, n
            assert n not in changed, n
    assert {n for n, p in model.named_parameters() if id(p) in aux} == changed
    # a batch the forward pass did not see is re-encoded instead of using the cache
    other = model.aux_loss(*batch(ctx, seed=77))
    assert other is not None and torch.isfinite(other)
    assert set(map(id, model.main_parameters())).isdisjoint(aux)


@pytest.mark.parametrize("backbone", ["bpr", "vbpr", "freedom"])
@pytest.mark.parametrize("mods", [("image", "text"), ("image", "text", "meta")])
def test_components_sum_to_item_vector_and_export_is_deterministic(backbone, mods, tmp_path, ds2, ds3) -> None:
    ds = ds2 if len(mods) == 2 else ds3
    model, ctx = make(ds, backbone=backbone)
    train(model, ctx, steps=3)
    model.train()
    emb = model.export()
    assert list(emb.components) == ["collaborative", "shared", *(f"unique:{m}" for m in mods), "synergy"]
    total = sum(emb.components.values())
    np.testing.assert_array_equal(total, emb.item)  # summed in the same order: exact
    assert emb.item.shape == (ds.n_items, DIM) and emb.user.shape == (ds.n_users, DIM)
    assert model.training, "export must restore the training mode"
    again = model.export()
    np.testing.assert_array_equal(again.item, emb.item)
    u, i = model.embeddings()  # in train mode: still z = mu, eval-mode backbone
    np.testing.assert_array_equal(i.numpy(), emb.item)
    np.testing.assert_array_equal(u.numpy(), emb.user)
    save_embeddings(tmp_path, emb)
    assert list(load_embeddings(tmp_path).components) == list(emb.components)
    # the content part is not zero: MRdIB really contributes to the item vector
    assert np.abs(emb.item - emb.components["collaborative"]).max() > 1e-4


def test_training_forward_scores_with_sampled_codes_but_eval_uses_mu(ds2) -> None:
    model, _ = make(ds2)
    items = torch.arange(ds2.n_items)
    with torch.no_grad():
        mu_only = model.mrdib.encode(items, sample=False)
        sampled = model.mrdib.encode(items, sample=True)
    assert torch.equal(mu_only.z[0], mu_only.mu[0])
    assert not torch.equal(sampled.z[0], sampled.mu[0])
    assert torch.all(sampled.sigma[0] > 0)


def test_content_added_only_for_batch_items_in_training(ds2, monkeypatch) -> None:
    """Training encodes the batch's distinct items, not the catalogue."""
    model, ctx = make(ds2)
    users, pos, neg = batch(ctx, n=8)
    seen = []
    original = model.mrdib.encode

    def spy(items, sample):
        seen.append(items.clone())
        return original(items, sample)

    monkeypatch.setattr(model.mrdib, "encode", spy)
    model(users, pos, neg)
    assert len(seen) == 1
    assert torch.equal(seen[0], torch.unique(torch.cat([pos, neg])))


@pytest.mark.parametrize("mask", ["zero", "noise"])
def test_synergy_intervention_removes_the_masked_modality(ds3, mask: str) -> None:
    model, _ = make(ds3, synergy_mask=mask)
    plugin = model.mrdib
    items = torch.arange(ds3.n_items)
    at = torch.arange(ds3.n_items)

    def masked(k: int) -> torch.Tensor:
        torch.manual_seed(5)  # same noise draws for the "noise" mask
        with torch.no_grad():
            return plugin.masked_synergy(plugin.encode(items, sample=False), k, at)

    plugin._features = [x.clone() for x in plugin._features]  # private copies: the fixture's arrays stay intact
    base = {k: masked(k) for k in range(3)}
    original = [x.clone() for x in plugin._features]
    try:
        plugin._features[1].add_(torch.randn_like(plugin._features[1]) * 3.0)  # change modality 1's input
        assert torch.allclose(masked(1), base[1], atol=1e-6), "masked modality's input still reaches z_syn"
        assert not torch.allclose(masked(0), base[0], atol=1e-3), "other modalities' inputs must still count"
        with torch.no_grad():
            full = plugin.encode(items, sample=False).parts["synergy"]
            plugin._features[1].copy_(original[1])
            full_orig = plugin.encode(items, sample=False).parts["synergy"]
        assert not torch.allclose(full, full_orig, atol=1e-3)
    finally:
        for x, o in zip(plugin._features, original, strict=True):
            x.copy_(o)


def test_masked_synergy_matches_a_full_forward_with_the_replaced_input(ds2) -> None:
    """The block-wise shortcut equals recomputing z_syn from [z_0, encoder(0)] through the whole MLP."""
    model, _ = make(ds2, synergy_mask="zero")
    p = model.mrdib
    items = torch.arange(ds2.n_items)
    with torch.no_grad():
        st = p.encode(items, sample=False)
        got = p.masked_synergy(st, 1, items)
        z1 = p.encoders[1](torch.zeros(1, p._features[1].shape[1]), raw=False)[0].expand(len(items), -1)
        cat = torch.cat([st.z[0], z1], -1)
        ref = p.proj_synergy(p.synergy.second(torch.nn.functional.leaky_relu(p.synergy.first(cat), 0.2)))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["club", "hsic", "dcor", "cka"])
def test_redundancy_estimators_are_non_negative_and_differentiable(ds3, estimator: str) -> None:
    model, ctx = make(ds3, redundancy_estimator=estimator, contrastive_max=16)
    out = model(*batch(ctx))
    assert out["mrdib_red_dep"] >= 0
    out["loss"].backward()
    assert model.mrdib.unique_heads[0].weight.grad.abs().sum() > 0
    assert (model.aux_loss(*batch(ctx)) is None) == (estimator != "club")


def test_single_modality_runs_without_pair_terms() -> None:
    ds = planted(("text",))
    model, ctx = make(ds)
    out = model(*batch(ctx))
    assert torch.isfinite(out["loss"])
    assert "mrdib_uni_cond" not in out and float(out["mrdib_red_nce"]) == 0.0
    out["loss"].backward()


def test_no_features_is_a_clear_error(ds2) -> None:
    from training.config import MRdIBConfig
    from training.models.base import ModelContext
    from training.models.mrdib import MRdIB

    ctx = ModelContext.from_dataset(ds2)
    ctx.features = {}
    with pytest.raises(ValueError, match="at least one item feature modality"):
        MRdIB(ctx, MRdIBConfig(), DIM)
