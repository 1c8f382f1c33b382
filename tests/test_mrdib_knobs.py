"""The regularisation knobs added to make the plug-in help on sparse data: content L2, P's init scale,
the sufficiency weight, encoder dropout and detached user vectors in the auxiliary terms."""

from __future__ import annotations

import pytest
import torch

from tests._mrdib_helpers import batch, make, planted


@pytest.fixture(scope="module")
def ds():
    return planted(("image", "text"))


def test_content_reg_is_the_l2_of_the_batch_content_and_is_weighted(ds) -> None:
    model, ctx = make(ds, content_reg=0.5, use_ib=False)  # deterministic codes: the content can be recomputed
    users, pos, neg = batch(ctx)
    out = model(users, pos, neg)
    content = model.mrdib.catalogue_parts(ctx.n_items)
    total = sum(content.values())
    expected = ((total[pos] ** 2).sum() + (total[neg] ** 2).sum()) / (2 * len(pos))
    torch.testing.assert_close(out["mrdib_creg"], expected, rtol=1e-4, atol=1e-6)
    rest = sum(v for k, v in out.items() if k not in ("loss", "mrdib_creg"))
    others, _ = make(ds, content_reg=0.0, use_ib=False)
    assert "mrdib_creg" not in others(users, pos, neg)
    # the total holds 0.5 * creg: removing it leaves a different loss than the unweighted sum
    assert not torch.isclose(out["loss"], rest + out["mrdib_creg"])


def test_init_scale_multiplies_the_projection_only(ds) -> None:
    a, _ = make(ds, init_scale=1.0, seed=5)
    b, _ = make(ds, init_scale=0.1, seed=5)
    torch.testing.assert_close(b.mrdib.proj_shared.weight, 0.1 * a.mrdib.proj_shared.weight)
    torch.testing.assert_close(b.mrdib.proj_synergy.weight, 0.1 * a.mrdib.proj_synergy.weight)
    torch.testing.assert_close(b.mrdib.encoders[0].hidden.weight, a.mrdib.encoders[0].hidden.weight)


def test_detach_user_keeps_auxiliary_gradients_out_of_the_user_vectors(ds) -> None:
    for detach in (False, True):
        model, ctx = make(ds, detach_user=detach, content_reg=0.0)
        out = model(*batch(ctx))
        aux = out["loss"] - out["bpr"] - out["reg"]
        aux.backward()
        grad = model.backbone.user_emb.grad
        moved = grad is not None and bool(grad.abs().sum() > 0)
        assert moved is not detach
        # the encoders still learn from the auxiliary terms
        assert model.mrdib.encoders[0].hidden.weight.grad.abs().sum() > 0


def test_encoder_dropout_is_random_in_training_and_off_in_eval(ds) -> None:
    model, ctx = make(ds, dropout=0.5, use_ib=False)
    items = torch.arange(ctx.n_items)
    model.train()
    a, b = model.mrdib.encode(items, sample=False).content, model.mrdib.encode(items, sample=False).content
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, d = model.mrdib.encode(items, sample=False).content, model.mrdib.encode(items, sample=False).content
    torch.testing.assert_close(c, d)


def test_defaults_are_the_validated_ones() -> None:
    from training.config import MRdIBConfig

    c = MRdIBConfig()
    assert c.redundancy_estimator == "hsic" and c.content_reg > 0 and c.init_scale < 1 and c.lambda_ib < 1
