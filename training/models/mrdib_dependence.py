"""Dependence measures and contrastive/ranking losses used by the MRdIB plug-in.

Kept apart from mrdib.py so each estimator can be tested on its own and swapped by configuration
(`MRdIBConfig.redundancy_estimator`):

- `CLUBEstimator`: the contrastive log-ratio upper bound of mutual information (Cheng et al., ICML 2020).
  It owns a small variational network q(y|x) that is trained by its *own* objective
  (`learning_loss`, maximum likelihood on detached inputs) in its own optimiser step, while the
  main loss uses `estimate` with the network's parameters detached, so that the main backward pass
  never writes gradients into the estimator and the estimator's step never moves the encoders.
- `hsic`: normalised HSIC with Gaussian kernels (median-heuristic bandwidth, so it is invariant to the
  representation's scale and cannot be "minimised" by shrinking vectors).
- `distance_correlation`: squared distance correlation (Székely et al. 2007), also scale-invariant.

All three return a scalar >= 0 (CLUB is clamped, the other two are non-negative by construction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOGVAR_BOUND = 5.0  # q's log-variance lies in (-5, 5)


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Mean BPR loss -log sigmoid(<u, i+> - <u, i->) over rows; all arguments [B, d]."""
    return F.softplus(-(user * (pos - neg)).sum(-1)).mean()


def info_nce(query: Tensor, key: Tensor, temperature: float, symmetric: bool = True) -> Tensor:
    """In-batch InfoNCE: row b of `query` must pick row b of `key` among all rows (cosine / temperature).

    Returned as a loss (cross-entropy, >= 0), the negative of the usual MI lower bound up to log(B).
    `symmetric` averages both directions (query->key and key->query), as in CLIP.
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(key, dim=-1)
    logits = q @ k.T / temperature
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


class CLUBEstimator(nn.Module):
    """CLUB upper bound of I(X; Y) with a diagonal-Gaussian variational network q(y | x).

    I_CLUB = E_{p(x,y)}[log q(y|x)] - E_{p(x)p(y)}[log q(y|x)]. The second expectation over all
    in-batch pairs (i, j) is computed in closed form, O(n d) instead of O(n^2 d):
    mean_j (mu_i - y_j)^2 = (mu_i - ybar)^2 + var(y) per dimension.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(x_dim, hidden_dim)
        self.mu = nn.Linear(hidden_dim, y_dim)
        self.logvar = nn.Linear(hidden_dim, y_dim)

    def _gaussian(self, x: Tensor, frozen: bool) -> tuple[Tensor, Tensor]:
        def p(t: Tensor) -> Tensor:
            return t.detach() if frozen else t

        h = F.relu(F.linear(x, p(self.hidden.weight), p(self.hidden.bias)))
        mu = F.linear(h, p(self.mu.weight), p(self.mu.bias))
        # a bounded log-variance (like the reference implementation's tanh, but wider) stops q from
        # collapsing onto single samples, which would make the bound explode
        logvar = _LOGVAR_BOUND * torch.tanh(F.linear(h, p(self.logvar.weight), p(self.logvar.bias)) / _LOGVAR_BOUND)
        return mu, logvar

    def estimate(self, x: Tensor, y: Tensor, standardised: bool = False) -> Tensor:
        """MI upper bound (clamped >= 0), differentiable in x and y, NOT in the estimator's parameters.

        `standardised=True` says x and y already went through `standardise` (saves recomputing it per pair).
        """
        if not standardised:
            x, y = standardise(x), standardise(y)
        mu, logvar = self._gaussian(x, frozen=True)
        inv_var = torch.exp(-logvar)
        positive = -0.5 * ((mu - y) ** 2 * inv_var).sum(-1)
        y_mean = y.mean(0, keepdim=True)
        y_var = y.var(0, unbiased=False, keepdim=True)
        negative = -0.5 * (((mu - y_mean) ** 2 + y_var) * inv_var).sum(-1)
        return (positive - negative).mean().clamp_min(0.0)

    def learning_loss(self, x: Tensor, y: Tensor, standardised: bool = False) -> Tensor:
        """Negative log-likelihood of y under q(y|x) (constants dropped); gradients reach only this network."""
        x, y = x.detach(), y.detach()
        if not standardised:
            x, y = standardise(x), standardise(y)
        mu, logvar = self._gaussian(x, frozen=False)
        return 0.5 * (((mu - y) ** 2) * torch.exp(-logvar) + logvar).sum(-1).mean()


def standardise(t: Tensor) -> Tensor:
    """Per-dimension batch standardisation. MI is invariant to it, and it keeps q(y|x) at a fixed scale while
    the encoders' output scale drifts during training (otherwise q lags behind and the bound is meaningless)."""
    return (t - t.mean(0, keepdim=True)) / t.std(0, unbiased=False, keepdim=True).clamp_min(1e-6)


def _sq_dists(x: Tensor) -> Tensor:
    sq = (x * x).sum(-1)
    return (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)


def _center(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def rbf_gram(x: Tensor) -> Tensor:
    """Doubly centred Gaussian Gram matrix [n, n] of the rows of x, bandwidth = mean squared distance.

    The bandwidth is detached (a choice, not a parameter) and scales with the data, so the measure cannot be
    lowered by shrinking x. The mean (not the median heuristic) avoids a sort of n^2 values at every step.
    """
    d2 = _sq_dists(x)
    n = d2.shape[0]
    bandwidth = (d2.sum() / max(n * (n - 1), 1)).detach().clamp_min(1e-12)
    return _center(torch.exp(-d2 / bandwidth))


def distance_gram(x: Tensor) -> Tensor:
    """Doubly centred Euclidean distance matrix [n, n] (the A of distance covariance)."""
    d2 = _sq_dists(x)
    eye = torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)
    # the diagonal is masked out so that the sqrt's infinite slope at 0 never reaches the gradient
    d = torch.where(eye, torch.zeros_like(d2), torch.sqrt(d2.clamp_min(1e-12)))
    return _center(d)


def linear_gram(x: Tensor) -> Tensor:
    """Doubly centred linear Gram matrix X X^T [n, n]: with gram_dependence this is linear CKA, the normalised
    squared cross-covariance. Zero exactly when no linear function of one code correlates with the other,
    i.e. it targets what a dot-product scorer (and a linear probe) can read, which the RBF kernel's HSIC
    weighs together with every non-linear dependence."""
    return _center(x @ x.T)


def gram_dependence(a: Tensor, b: Tensor) -> Tensor:
    """<A, B> / (|A| |B|) for centred Gram matrices: normalised HSIC with rbf_gram, dCor^2 with distance_gram,
    linear CKA with linear_gram."""
    if a.shape[0] < 3:
        return a.new_zeros(())
    den = torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-12)
    return ((a * b).sum() / den).clamp_min(0.0)


def hsic(x: Tensor, y: Tensor) -> Tensor:
    """Normalised HSIC (in [0, 1]) between the rows of x [n, a] and y [n, b], Gaussian kernels."""
    return gram_dependence(rbf_gram(x), rbf_gram(y))


def distance_correlation(x: Tensor, y: Tensor) -> Tensor:
    """Squared distance correlation (in [0, 1]) between the rows of x and y; 0 iff independent (population)."""
    return gram_dependence(distance_gram(x), distance_gram(y))
