"""The MRdIB plug-in: bottleneck encoders, shared/unique/synergy decomposition and their losses.

See ../shared/docs/MRdIB.md for the method. This module is backbone-agnostic: the Recommender
(training/models/recommender.py) calls `encode` on the distinct items of a batch, adds
`state.content` to the backbone's item vectors at the output of propagate(), and adds
`losses(...)` (weighted by `weighted_total`) to the backbone's own loss terms.

Concrete choices where MRdIB.md leaves one open (each is switchable through MRdIBConfig):

- Input scaling: each modality is standardised per dimension with catalogue statistics computed once,
  so encoders start at the same scale whatever the feature extractor. The synergy intervention acts
  in that standardised space: "zero" replaces x_m by the catalogue mean (carries no item-specific
  information and stays in-distribution), "noise" by N(0, 1) draws (matches the marginal scale).
- MLP_m is one hidden layer (Linear + LeakyReLU) followed by linear mu / sigma heads, so the path to
  mu is a two-layer MLP. With use_ib off the sigma head does not exist and z_m = mu_m.
- Shared/unique split: two linear heads on z_m ("two heads", not slices), so their sizes are free.
- P = [P_s, P_u1..P_uM, P_syn] has no bias: a constant item offset b adds <e_u, b> to every item of a
  user and cancels in every BPR difference, so it cannot change a ranking and would get no BPR gradient.
  Hence the "collaborative" component is exactly the backbone's item vector.
- Scoring a part against the user vector e_u needs it in the user dimension:
  * z_m (sufficiency) goes through its own bias-free linear head Q_m, because z_m itself is not a block
    of the item vector; a head per modality lets each code rank in its own basis.
  * u_m (unique InfoNCE) and z_syn (synergy BPR and its intervention) are scored through their own
    block of P, i.e. through exactly the component that is exported. This makes the exported
    "unique:<m>" / "synergy" components the ones that carry the property the loss asks for, so
    per-component scores <e_u, component> used for explanations are faithful.
- Unique term, FactorCL conditional part: FactorCL's unique objective is
  I(X_m; Y) - I(X_m; X_m') + I(X_m; X_m' | Y). The first is the u_m-e_u InfoNCE; the second is the
  redundancy penalty on (u_m, u_m'); the third is added here as a conditional InfoNCE whose critic sees
  the target: f(u_m, u_m', e_u) = cos(g_m([u_m; e_u]), k_m'(u_m')) / T. Negatives keep the anchor's
  e_u and take u_m' of other triples (the usual marginal approximation of p(x_m' | y)). Concatenating
  e_u to both sides would let the critic match triples on e_u alone, which is trivial here because
  each triple has its own user.
- e_u is the backbone's final user vector and is NOT detached in the auxiliary terms: the decomposition is
  defined relative to the recommendation target, so the user space and the content codes are fitted together.
- Averages: KL, redundancy and dependence terms are over the batch's DISTINCT items (popular items are
  not over-weighted); ranking terms (sufficiency, unique, synergy) are over triples, like BPR.
  Per-modality terms are summed over modalities, as in MRdIB.md's L_suf and L_syn.
- Cost: the content vector needs every distinct item of the batch, but the auxiliary terms do not. The
  InfoNCE terms, the dependence estimates (CLUB, HSIC, dCor, linear CKA) and the synergy interventions use a random
  subset of at most `contrastive_max` rows (distinct items, or triples for the user-facing terms), drawn
  with torch's RNG (reproducible). KL, sufficiency and the synergy BPR use everything (they are O(n)).
- Switches: a term that is off contributes nothing and its modules are not built (so DDP sees no
  unused parameters). use_synergy off removes the synergy branch altogether (no "synergy" component);
  use_unique / use_redundant off remove only their critics/estimators (the shared/unique heads are
  part of the decomposition that builds the item vector and stay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import MRdIBConfig
from training.models.base import ModelContext
from training.models.mrdib_dependence import (
    CLUBEstimator,
    bpr_loss,
    distance_gram,
    gram_dependence,
    info_nce,
    linear_gram,
    rbf_gram,
    standardise,
)

#: items per block when representations are computed for the whole catalogue (eval / export)
EXPORT_BLOCK = 8192
_SIGMA_SHIFT = 5.0  # sigma = softplus(W_s h - 5): starts near 0.007, i.e. an almost deterministic code


def principal_axes(x: Tensor, k: int) -> Tensor:
    """The top-k principal axes [d, k] of the rows of x (eigenvectors of the covariance, largest first).

    Deterministic (eigh of the d x d covariance, sign fixed so each axis' largest entry is positive), and
    O(n d^2): cheap next to training for catalogue features up to a few thousand dimensions."""
    xc = x.double() - x.double().mean(0, keepdim=True)
    _, vecs = torch.linalg.eigh(xc.T @ xc)  # ascending eigenvalues
    axes = vecs[:, -k:].flip(1)
    sign = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return (axes * sign).to(x.dtype)


def _synergy_penalty(margin: Tensor, kind: str) -> Tensor:
    """Penalty on the masked synergy branch still separating i+ from i- (margin m), per triple.

    (sigmoid(m) - 0.5)^2 is bounded, but its gradient vanishes once |m| is large, exactly where the branch
    leaks most; log cosh(m) = |m| - log 2 for large |m| keeps a gradient of tanh(m) -> +-1 there, and behaves
    like m^2 / 2 near 0. (Computed as softplus(2m) - m - log 2, which cannot overflow.)"""
    if kind == "sigmoid_sq":
        return (torch.sigmoid(margin) - 0.5) ** 2
    return F.softplus(2.0 * margin) - margin - math.log(2.0)


class ModalityEncoder(nn.Module):
    """h = LeakyReLU(W x_std + b); mu = W_mu h; sigma = softplus(W_s h - 5) (only when stochastic).

    x_std = (x - mean) * inv_std is the standardised input. `forward(x, raw=True)` takes raw features and folds
    the standardisation into the first layer, W x_std + b = (W * inv_std) x + (b - (W * inv_std) mean), which
    costs O(hidden * d_in) per step instead of two elementwise passes over every [n, d_in] input.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, latent_dim: int, stochastic: bool, x: Tensor, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.in_dim = in_dim
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("inv_std", 1.0 / x.std(0, unbiased=False).clamp_min(1e-6))
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.sigma = nn.Linear(hidden_dim, latent_dim) if stochastic else None

    def forward(self, x: Tensor, raw: bool = True) -> tuple[Tensor, Tensor | None]:
        if raw:
            w = self.hidden.weight * self.inv_std
            pre = F.linear(x, w, self.hidden.bias - w @ self.mean)
        else:
            pre = self.hidden(x)
        h = F.leaky_relu(pre, 0.2)
        if self.dropout > 0.0 and self.training:
            h = F.dropout(h, self.dropout)
        mu = self.mu(h)
        if self.sigma is None:
            return mu, None
        sigma = F.softplus(self.sigma(h) - _SIGMA_SHIFT).clamp_min(1e-8)
        return mu, sigma


class SynergyBranch(nn.Module):
    """z_syn = W2 LeakyReLU(W1 [z_1; ...; z_M] + b1) + b2: a 2-layer MLP over the concatenated codes.

    W1 [z_1; ...; z_M] is evaluated as sum_k W1_k z_k (column blocks of the same W1) and the blocks are kept,
    so that the intervention "modality k withheld" only recomputes block k: W1 [..; z'_k; ..] =
    pre - W1_k z_k + W1_k z'_k. With the zero mask z'_k is one row shared by all items, so each of the M
    interventions costs a second layer only, not a full forward pass.
    """

    def __init__(self, n_modalities: int, latent_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.first = nn.Linear(n_modalities * latent_dim, hidden_dim)
        self.second = nn.Linear(hidden_dim, out_dim)

    def block(self, k: int, z: Tensor) -> Tensor:
        """W1_k z (no bias): modality k's contribution to the first layer."""
        lat = self.latent_dim
        return F.linear(z, self.first.weight[:, k * lat : (k + 1) * lat])

    def head(self, pre: Tensor) -> Tensor:
        return self.second(F.leaky_relu(pre + self.first.bias, 0.2))

    def forward(self, zs: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        blocks = [self.block(k, z) for k, z in enumerate(zs)]
        pre = blocks[0]
        for b in blocks[1:]:
            pre = pre + b
        return self.head(pre), blocks


@dataclass
class PluginState:
    """Representations of a set of items (the batch's distinct items in training). Shapes: N items."""

    items: Tensor  # int64 [N] catalogue rows
    z: list[Tensor]  # per modality [N, latent]
    mu: list[Tensor]  # per modality [N, latent]
    sigma: list[Tensor | None]  # per modality [N, latent] or None (use_ib off)
    shared_m: list[Tensor]  # per modality [N, shared]
    shared: Tensor  # [N, shared] mean of shared_m: THE shared representation
    unique: list[Tensor]  # per modality [N, unique]
    synergy: Tensor | None  # [N, synergy] or None (use_synergy off)
    synergy_blocks: list[Tensor] | None  # per modality [N, hidden]: W1_k z_k (see SynergyBranch)
    parts: dict[str, Tensor] = field(default_factory=dict)  # component name -> [N, d] (P's blocks)

    def select(self, rows: Tensor) -> PluginState:
        """The same representations for `self.items[rows]` only (e.g. a batch's items out of the catalogue)."""

        def pick(ts: list[Tensor]) -> list[Tensor]:
            return [t[rows] for t in ts]

        return PluginState(
            items=self.items[rows],
            z=pick(self.z),
            mu=pick(self.mu),
            sigma=[None if t is None else t[rows] for t in self.sigma],
            shared_m=pick(self.shared_m),
            shared=self.shared[rows],
            unique=pick(self.unique),
            synergy=None if self.synergy is None else self.synergy[rows],
            synergy_blocks=None if self.synergy_blocks is None else pick(self.synergy_blocks),
            parts={k: v[rows] for k, v in self.parts.items()},
        )

    @property
    def content(self) -> Tensor:
        """P [s; u_1..u_M; z_syn], summed in component order (the order export uses)."""
        it = iter(self.parts.values())
        total = next(it)
        for p in it:
            total = total + p
        return total


class MRdIB(nn.Module):
    """The plug-in. Build with the training context, its config and the backbone's embedding size."""

    def __init__(self, ctx: ModelContext, cfg: MRdIBConfig, dim: int) -> None:
        super().__init__()
        if not ctx.features:
            raise ValueError("MRdIB needs at least one item feature modality; the dataset has none")
        self.cfg = cfg
        self.dim = dim
        self.modalities: list[str] = list(ctx.features)
        n_mod = len(self.modalities)
        # Plain attributes, not buffers: a buffer would be copied into every checkpoint and broadcast by
        # DDP at every step; the features are data, already on ctx.device.
        self._raw: list[Tensor] = []
        for m in self.modalities:
            x = ctx.features[m]
            if x.ndim != 2 or x.shape[0] != ctx.n_items:
                raise ValueError(f"features[{m!r}] must be [n_items={ctx.n_items}, d], got {tuple(x.shape)}")
            self._raw.append(x.float())
        # What the encoders read: the raw features, or (input_pca) their coordinates on the catalogue's top
        # principal axes. A 384-d title embedding has far more dimensions than an item with a handful of
        # interactions can constrain; the leading axes keep most of what differs between items. Projected
        # once here (derived from the data, like a backbone's kNN graph, so rebuilt identically on reload).
        k = cfg.input_pca
        self._features = [x @ principal_axes(x, k) if 0 < k < x.shape[1] else x for x in self._raw]

        lat, hid = cfg.latent_dim, cfg.hidden_dim
        self.encoders = nn.ModuleList(
            ModalityEncoder(x.shape[1], hid, lat, stochastic=cfg.use_ib, x=x, dropout=cfg.dropout)
            for x in self._features
        )
        self.sufficiency_heads = (
            nn.ModuleList(nn.Linear(lat, dim, bias=False) for _ in range(n_mod)) if cfg.use_ib else None
        )
        self.shared_heads = nn.ModuleList(nn.Linear(lat, cfg.shared_dim) for _ in range(n_mod))
        self.unique_heads = nn.ModuleList(nn.Linear(lat, cfg.unique_dim) for _ in range(n_mod))
        self.synergy = SynergyBranch(n_mod, lat, hid, cfg.synergy_dim) if cfg.use_synergy else None
        # P, one block per component (no bias: see the module docstring)
        self.proj_shared = nn.Linear(cfg.shared_dim, dim, bias=False)
        self.proj_unique = nn.ModuleList(nn.Linear(cfg.unique_dim, dim, bias=False) for _ in range(n_mod))
        self.proj_synergy = nn.Linear(cfg.synergy_dim, dim, bias=False) if cfg.use_synergy else None
        if cfg.init_scale != 1.0:
            # a small P starts the item vector at the backbone's own (ID) vector: with the default init the
            # content vector is ~10x larger than xavier ID rows and swamps them before it has learnt anything
            with torch.no_grad():
                for proj in (self.proj_shared, *self.proj_unique, self.proj_synergy):
                    if proj is not None:
                        proj.weight.mul_(cfg.init_scale)

        pairs = n_mod >= 2
        if cfg.use_unique and pairs:
            self.cond_query = nn.ModuleList(
                nn.Sequential(nn.Linear(cfg.unique_dim + dim, hid), nn.LeakyReLU(0.2), nn.Linear(hid, cfg.unique_dim))
                for _ in range(n_mod)
            )
            self.cond_key = nn.ModuleList(nn.Linear(cfg.unique_dim, cfg.unique_dim) for _ in range(n_mod))
        else:
            self.cond_query = self.cond_key = None
        self.club_us: nn.ModuleList | None = None
        self.club_uu: nn.ModuleList | None = None
        if cfg.use_redundant and cfg.redundancy_estimator == "club":
            ch = cfg.club_hidden_dim
            self.club_us = nn.ModuleList(CLUBEstimator(cfg.unique_dim, cfg.shared_dim, ch) for _ in range(n_mod))
            self.club_uu = nn.ModuleList(
                CLUBEstimator(cfg.unique_dim, cfg.unique_dim, ch) for _ in combinations(range(n_mod), 2)
            )

    # ------------------------------------------------------------------ representations
    @property
    def raw_features(self) -> dict[str, Tensor]:
        """modality -> the item features [n_items, d_m] as given (before any PCA; not standardised)."""
        return dict(zip(self.modalities, self._raw, strict=True))

    @property
    def component_names(self) -> list[str]:
        names = ["shared", *(f"unique:{m}" for m in self.modalities)]
        return [*names, "synergy"] if self.synergy is not None else names

    def encode(self, items: Tensor, sample: bool) -> PluginState:
        """All representations of `items`; `sample` draws z = mu + sigma*eps, otherwise z = mu."""
        zs, mus, sigmas = [], [], []
        for k, enc in enumerate(self.encoders):
            mu, sigma = enc(self._features[k].index_select(0, items))
            z = mu + sigma * torch.randn_like(mu) if (sample and sigma is not None) else mu
            zs.append(z)
            mus.append(mu)
            sigmas.append(sigma)
        shared_m = [head(z) for head, z in zip(self.shared_heads, zs, strict=True)]
        shared = torch.stack(shared_m).mean(0)
        unique = [head(z) for head, z in zip(self.unique_heads, zs, strict=True)]
        synergy, blocks = self.synergy(zs) if self.synergy is not None else (None, None)
        parts = {"shared": self.proj_shared(shared)}
        for m, proj, u in zip(self.modalities, self.proj_unique, unique, strict=True):
            parts[f"unique:{m}"] = proj(u)
        if synergy is not None:
            parts["synergy"] = self.proj_synergy(synergy)
        return PluginState(items, zs, mus, sigmas, shared_m, shared, unique, synergy, blocks, parts)

    @torch.no_grad()
    def catalogue_parts(self, n_items: int) -> dict[str, Tensor]:
        """Deterministic (z = mu) components [n_items, d] for the whole catalogue, computed in blocks."""
        device = self._features[0].device
        blocks: dict[str, list[Tensor]] = {name: [] for name in self.component_names}
        for start in range(0, n_items, EXPORT_BLOCK):
            items = torch.arange(start, min(start + EXPORT_BLOCK, n_items), device=device)
            for name, p in self.encode(items, sample=False).parts.items():
                blocks[name].append(p)
        return {name: torch.cat(b) for name, b in blocks.items()}

    @torch.no_grad()
    def representations(self, n_items: int) -> dict[str, Tensor]:
        """Deterministic per-item codes for diagnostics: "z:<m>", "shared", "unique:<m>", "synergy"."""
        device = self._features[0].device
        out: dict[str, list[Tensor]] = {}
        for start in range(0, n_items, EXPORT_BLOCK):
            st = self.encode(torch.arange(start, min(start + EXPORT_BLOCK, n_items), device=device), sample=False)
            reps = {f"z:{m}": z for m, z in zip(self.modalities, st.z, strict=True)}
            reps["shared"] = st.shared
            reps.update({f"unique:{m}": u for m, u in zip(self.modalities, st.unique, strict=True)})
            if st.synergy is not None:
                reps["synergy"] = st.synergy
            for k, v in reps.items():
                out.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in out.items()}

    # ------------------------------------------------------------------ losses
    def _subset(self, n: int, device: torch.device) -> Tensor | None:
        k = self.cfg.contrastive_max
        return None if n <= k else torch.randperm(n, device=device)[:k]

    def _masked_code(self, k: int, n: int) -> Tensor:
        """z_k for input x_k replaced per `synergy_mask` (deterministic mu: the intervention, not the noise).

        [1, latent] for "zero" (the same input for every item), [n, latent] for "noise"."""
        enc, ref = self.encoders[k], self._features[k]
        if self.cfg.synergy_mask == "zero":
            return enc(ref.new_zeros(1, enc.in_dim), raw=False)[0]
        return enc(torch.randn(n, enc.in_dim, device=ref.device, dtype=ref.dtype), raw=False)[0]

    def masked_synergy(self, state: PluginState, k: int, at: Tensor) -> Tensor:
        """P_syn z_syn [len(at), d] of the items at positions `at` of `state.items`, with modality k withheld.

        The other modalities' codes are unchanged (the intervention replaces x_k only)."""
        assert self.synergy is not None and self.proj_synergy is not None and state.synergy_blocks is not None
        pre = None
        for j, b in enumerate(state.synergy_blocks):
            if j != k:
                pre = b[at] if pre is None else pre + b[at]
        masked = self.synergy.block(k, self._masked_code(k, len(at)))
        pre = masked.expand(len(at), -1) if pre is None else pre + masked
        return self.proj_synergy(self.synergy.head(pre))

    def losses(self, state: PluginState, user: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """Unweighted MRdIB terms for a batch (each divided by its chance-level scale when `normalize_terms`).

        user: [B, d] the backbone's final user vectors of the triples; pos, neg: int64 [B] positions of
        each triple's items in `state.items`.

        Scales (`normalize_terms`): a sum of k InfoNCE terms over n rows is divided by k log n, of k BPR terms
        by k log 2 (their values when nothing is learnt), of k dependence estimates in [0, 1] by k, and the
        synergy penalty by its maximum ((sigmoid - 0.5)^2 <= 1/4 per modality) or, for log cosh, by the number
        of modalities. Unnormalised, an InfoNCE term is ~5 and a dependence term < 1, so one lambda would weigh
        them very differently.
        """
        cfg, out = self.cfg, {}
        n_mod = len(self.modalities)
        device = user.device
        norm = cfg.normalize_terms
        pairs = list(combinations(range(n_mod), 2))

        def scaled(value: Tensor, chance: float) -> Tensor:
            return value / chance if norm and chance > 0 else value

        if cfg.content_reg > 0.0:
            content = state.content
            out["mrdib_creg"] = ((content[pos] ** 2).sum() + (content[neg] ** 2).sum()) / (2.0 * max(len(pos), 1))
        if cfg.detach_user:
            user = user.detach()
        if cfg.use_ib:
            assert self.sufficiency_heads is not None
            suf, kl = user.new_zeros(()), user.new_zeros(())
            for head, z, mu, sigma in zip(self.sufficiency_heads, state.z, state.mu, state.sigma, strict=True):
                q = head(z)
                suf = suf + bpr_loss(user, q[pos], q[neg])
                assert sigma is not None
                kl = kl + 0.5 * (mu * mu + sigma * sigma - 2.0 * torch.log(sigma) - 1.0).sum(-1).mean()
            out["mrdib_suf"], out["mrdib_kl"] = scaled(suf, n_mod * math.log(2.0)), kl

        if cfg.use_unique:
            rows = self._subset(len(pos), device)
            p_rows = pos if rows is None else pos[rows]
            e_u = user if rows is None else user[rows]
            log_n = math.log(max(len(p_rows), 2))
            uni = user.new_zeros(())
            for m in self.modalities:
                uni = uni + info_nce(e_u, state.parts[f"unique:{m}"][p_rows], cfg.temperature)
            out["mrdib_uni"] = scaled(uni, n_mod * log_n)
            if self.cond_query is not None and self.cond_key is not None:
                cond = user.new_zeros(())
                for a in range(n_mod):
                    query = self.cond_query[a](torch.cat([state.unique[a][p_rows], e_u], -1))
                    for b in range(n_mod):
                        if a != b:
                            key = self.cond_key[b](state.unique[b][p_rows])
                            cond = cond + info_nce(query, key, cfg.temperature, symmetric=False)
                out["mrdib_uni_cond"] = scaled(cond, n_mod * (n_mod - 1) * log_n)

        if cfg.use_redundant:
            rows = self._subset(len(state.items), device)

            def sub(t: Tensor) -> Tensor:
                return t if rows is None else t[rows]

            log_n = math.log(max(len(state.items) if rows is None else len(rows), 2))
            nce = user.new_zeros(())
            for a, b in pairs:
                nce = nce + info_nce(sub(state.shared_m[a]), sub(state.shared_m[b]), cfg.temperature)
            out["mrdib_red_nce"] = scaled(nce, len(pairs) * log_n)
            dep = user.new_zeros(())
            if self.club_us is not None and self.club_uu is not None:
                s_std, u_std = standardise(sub(state.shared)), [standardise(sub(u)) for u in state.unique]
                for k in range(n_mod):
                    dep = dep + self.club_us[k].estimate(u_std[k], s_std, standardised=True)
                for est, (a, b) in zip(self.club_uu, pairs, strict=True):
                    dep = dep + est.estimate(u_std[a], u_std[b], standardised=True)
            else:  # each centred Gram matrix once, then all pairs
                gram = {"hsic": rbf_gram, "dcor": distance_gram, "cka": linear_gram}[cfg.redundancy_estimator]
                g_s = gram(sub(state.shared))
                g_u = [gram(sub(u)) for u in state.unique]
                for k in range(n_mod):
                    dep = dep + gram_dependence(g_u[k], g_s)
                for a, b in pairs:
                    dep = dep + gram_dependence(g_u[a], g_u[b])
            out["mrdib_red_dep"] = scaled(dep, n_mod + len(pairs))

        if cfg.use_synergy:
            syn = state.parts["synergy"]
            out["mrdib_syn_bpr"] = scaled(bpr_loss(user, syn[pos], syn[neg]), math.log(2.0))
            rows = self._subset(len(pos), device)
            p_rows, n_rows = (pos, neg) if rows is None else (pos[rows], neg[rows])
            e_u = user if rows is None else user[rows]
            mask = user.new_zeros(())
            for k in range(n_mod):
                masked = self.masked_synergy(state, k, torch.cat([p_rows, n_rows]))
                margin = (e_u * (masked[: len(p_rows)] - masked[len(p_rows) :])).sum(-1)
                mask = mask + _synergy_penalty(margin, cfg.synergy_penalty).mean()
            out["mrdib_syn_mask"] = scaled(mask, n_mod * (0.25 if cfg.synergy_penalty == "sigmoid_sq" else 1.0))
        return out

    def weighted_total(self, terms: dict[str, Tensor]) -> Tensor | None:
        """L_IB + lambda_u L_uni + lambda_r L_red + lambda_s L_syn from `losses`' terms; None if all are off."""
        cfg = self.cfg
        weights = {
            "mrdib_suf": cfg.lambda_ib,
            "mrdib_creg": cfg.content_reg,
            "mrdib_kl": cfg.beta,
            "mrdib_uni": cfg.lambda_u,
            "mrdib_uni_cond": cfg.lambda_u,
            "mrdib_red_nce": cfg.lambda_r,
            "mrdib_red_dep": cfg.lambda_r * cfg.dependence_weight,
            "mrdib_syn_bpr": cfg.lambda_s,
            "mrdib_syn_mask": cfg.lambda_s,
        }
        total: Tensor | None = None
        for name, value in terms.items():
            total = value * weights[name] if total is None else total + value * weights[name]
        return total

    # ------------------------------------------------------------------ CLUB estimator step
    def aux_parameters(self) -> list[nn.Parameter]:
        if self.club_us is None or self.club_uu is None:
            return []
        return [*self.club_us.parameters(), *self.club_uu.parameters()]

    def club_objective(self, unique: list[Tensor], shared: Tensor) -> Tensor | None:
        """Sum of the CLUB networks' negative log-likelihoods on (detached) unique / shared codes."""
        if self.club_us is None or self.club_uu is None:
            return None
        rows = self._subset(shared.shape[0], shared.device)  # same row budget as the estimate in `losses`
        if rows is not None:
            shared, unique = shared[rows], [u[rows] for u in unique]
        shared = standardise(shared.detach())
        unique = [standardise(u.detach()) for u in unique]
        loss = sum(est.learning_loss(u, shared, standardised=True) for est, u in zip(self.club_us, unique, strict=True))
        pairs = combinations(range(len(self.modalities)), 2)
        for est, (a, b) in zip(self.club_uu, pairs, strict=True):
            loss = loss + est.learning_loss(unique[a], unique[b], standardised=True)
        assert isinstance(loss, Tensor)
        return loss
