"""CLUB / HSIC / distance correlation: bounds, signs, invariances, and that minimising them removes dependence."""

from __future__ import annotations

import pytest
import torch

from training.models.mrdib_dependence import CLUBEstimator, bpr_loss, distance_correlation, hsic, info_nce


def _pair(n: int = 256, dependent: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    noise = torch.randn(n, 3, generator=g)
    y = (x[:, :3] ** 2 + 0.1 * noise) if dependent else noise
    return x, y


def _fit(est: CLUBEstimator, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> None:
    opt = torch.optim.Adam(est.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        est.learning_loss(x, y).backward()
        opt.step()


@pytest.mark.parametrize("dependent", [False, True])
def test_club_is_non_negative_and_separates_dependent_from_independent(dependent: bool) -> None:
    """q fitted on one sample, the bound evaluated on a fresh one (as in training: fit on batch t, use on t+1)."""
    torch.manual_seed(0)
    est = CLUBEstimator(4, 3, 32)
    x, y = _pair(512, dependent=dependent, seed=0)
    assert est.estimate(x, y) >= 0  # clamped even for an untrained q
    _fit(est, x, y)
    value = float(est.estimate(*_pair(512, dependent=dependent, seed=1)))
    assert value >= 0.0
    if dependent:
        assert value > 10.0, value
    else:
        assert value < 0.5, value


def test_club_estimate_gives_no_gradient_to_the_estimator_and_learning_loss_none_to_inputs() -> None:
    est = CLUBEstimator(4, 3, 8)
    x, y = _pair()
    x.requires_grad_(True)
    y.requires_grad_(True)
    est.estimate(x, y).backward()
    assert all(p.grad is None for p in est.parameters())
    x.grad, y.grad = None, None
    est.learning_loss(x, y).backward()
    assert x.grad is None and y.grad is None
    assert all(p.grad is not None for p in est.parameters())


def test_minimising_club_through_an_encoder_removes_the_dependence() -> None:
    """Alternating q-fit / encoder steps (the trainer's scheme) make f(x) independent of x's first coordinates."""
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(256, 4, generator=g)
    enc = torch.nn.Linear(4, 2)  # code that starts out mixing all of base
    est = CLUBEstimator(2, 2, 32)
    target = base[:, :2]  # we want the code to carry nothing about these
    opt_enc = torch.optim.Adam(enc.parameters(), lr=0.02)
    opt_q = torch.optim.Adam(est.parameters(), lr=0.01)

    def corr() -> float:
        code = enc(base).detach()
        c = torch.corrcoef(torch.cat([code, target], 1).T)[:2, 2:]
        return float(c.abs().max())

    start = corr()
    for _ in range(150):
        code = enc(base)
        opt_q.zero_grad()
        est.learning_loss(code, target).backward()
        opt_q.step()
        opt_enc.zero_grad()
        # keep the code informative about the other coordinates, so it cannot just collapse
        keep = ((code - base[:, 2:]) ** 2).mean()
        (keep + est.estimate(code, target)).backward()
        opt_enc.step()
    assert start > 0.3 and corr() < 0.15, (start, corr())


@pytest.mark.parametrize("measure", [hsic, distance_correlation])
def test_kernel_measures_range_dependence_and_scale_invariance(measure) -> None:
    xi, yi = _pair(dependent=False)
    xd, yd = _pair(dependent=True)
    ind, dep = float(measure(xi, yi)), float(measure(xd, yd))
    assert 0.0 <= ind < 0.06 and 0.15 < dep <= 1.0 + 1e-6, (ind, dep)
    assert float(measure(xd, xd)) == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(measure(100.0 * xd, 0.01 * yd), measure(xd, yd), rtol=1e-3, atol=1e-4)
    x = xd.clone().requires_grad_(True)
    measure(x, yd).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert float(measure(xd[:2], yd[:2])) == 0.0


def test_linear_cka_sees_linear_dependence_only() -> None:
    """The 'cka' estimator: high for a linear map, near zero for independent codes AND for the quadratic
    dependence HSIC catches (it is meant to target what a dot product can read, nothing more)."""
    from training.models.mrdib_dependence import gram_dependence, linear_gram

    def cka(x, y):
        return gram_dependence(linear_gram(x), linear_gram(y))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, generator=g)
    linear = x @ torch.randn(4, 3, generator=g) + 0.1 * torch.randn(256, 3, generator=g)
    xi, _ = _pair(dependent=False)
    xq, yq = _pair(dependent=True)  # y = x^2 + noise: dependent, but uncorrelated with x
    assert float(cka(x, linear)) > 0.4  # 3 of 4 directions, unequal spectra: high, not 1
    # finite-sample CKA of unrelated codes is small but positive (about 3 x 4 / 256 here)
    assert float(cka(xi, torch.randn(256, 3, generator=g))) < 0.1
    assert float(cka(xq, yq)) < 0.1 and float(hsic(xq, yq)) > 0.15
    torch.testing.assert_close(cka(100.0 * x, 0.01 * linear), cka(x, linear), rtol=1e-3, atol=1e-4)
    z = x.clone().requires_grad_(True)
    cka(z, linear).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_info_nce_and_bpr() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 8, generator=g)
    matched = float(info_nce(a, a, 0.1))
    shuffled = float(info_nce(a, a[torch.randperm(32, generator=g)], 0.1))
    assert matched < 0.1 < shuffled
    u, p = torch.ones(4, 2), torch.ones(4, 2)
    assert float(bpr_loss(u, p, -p)) < float(bpr_loss(u, -p, p))
    assert float(bpr_loss(u, p, p)) == pytest.approx(float(torch.log(torch.tensor(2.0))))
