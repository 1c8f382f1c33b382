"""MGCN (Yu et al., ACM MM 2023): "Multi-View Graph Convolutional Network for Multimedia
Recommendation", generalised from {image, text} to any number M >= 1 of modalities.

Why this design (from the paper):
- Behaviour-guided purifier: raw modality features carry much that is irrelevant to preference.
  Each item's modality view is its ID embedding gated by its projected features,
  e_m = e_id * sigmoid(W_g,m (W_m x_m + b_m) + b), so behaviour (the ID) decides what survives.
- Two kinds of views: the user-item view is LightGCN on the training graph (BackboneConfig.n_layers,
  MMRec n_ui_layers=2); each modality view propagates e_m over that modality's frozen cosine-weighted
  kNN item graph (n_mm_layers hops, sym-normalised with row degrees) and gives users the
  R-aggregated item views (R = normalised training user-item matrix).
- Behaviour-aware fuser: attention (query: Linear-Tanh-Linear, softmax over modalities) extracts the
  common part of the modality views; each modality's specific part (view - common) is gated by the
  user-item view (sigmoid preference gates); side = (sum_m specific_m + common) / (M + 1)
  (MMRec's /3 for two modalities). Final = user-item view + side, for users and items alike.
- Loss = BPR + reg_weight * L2 of the batch's final vectors (as MGCN; the backbone's own vectors,
  not the MRdIB-augmented ones) + cl_weight * (InfoNCE(side, user-item view) on the batch's
  positive items + on its users), temperature 0.2: aligning the views keeps modality noise out.
  Measured on ml-100k-mm (meta+text, lr 1e-3, batch 2048): valid Recall@20 after 5 epochs is 0.05
  with cl_weight 0.01 but 0.20 with 0 (the InfoNCE dominates early training on this dense dataset;
  contrasting distinct nodes only did not help, 0.03). Tune cl_weight per dataset (MMRec's grid).

Params (`BackboneConfig.params`, MMRec MGCN.yaml defaults):
    knn_k: 10                 neighbours per item in each modality graph
    n_mm_layers: 1            hops over the item-item graphs (MMRec n_layers)
    cl_weight: 0.01           InfoNCE weight (MMRec cl_loss, grid 0.001 / 0.01 / 0.1)
    temperature: 0.2          InfoNCE temperature (hard-coded in MMRec)
    finetune_features: True   raw features trainable, as MMRec's from_pretrained(freeze=False)
    knn_block_size: None      rows per similarity block when building the kNN graphs (None: auto)
reg_weight (`BackboneConfig.reg_weight`, MMRec 1e-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from training.config import BackboneConfig
from training.models.base import Backbone, ModelContext
from training.models.common import (
    ModelParams,
    bpr_loss,
    l2_reg,
    parse_params,
    require_modalities,
    xavier_embedding,
)
from training.models.graph import knn_item_graph, lightgcn_propagate, norm_adjacency, norm_interactions, unique_edges


class MGCNParams(ModelParams):
    knn_k: int = Field(10, ge=1)
    n_mm_layers: int = Field(1, ge=0)
    cl_weight: float = Field(0.01, ge=0.0)
    temperature: float = Field(0.2, gt=0.0)
    finetune_features: bool = True
    knn_block_size: int | None = Field(None, ge=1)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE of rows a[j] vs b[j] against all b[k] in the batch (cosine / temperature).

    cross_entropy over the similarity matrix is MMRec's -log(exp(pos)/sum exp) without overflow.
    """
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature  # [b, b]
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def _gate(d: int, device: torch.device) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d, device=device), nn.Sigmoid())


class MGCN(Backbone):
    name = "mgcn"
    uses_features = True
    propagates_items = True

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__(ctx, cfg)
        self.params = p = parse_params(MGCNParams, cfg, self.name)
        self.modalities = require_modalities(ctx, self.name)
        self.n_ui_layers = cfg.n_layers
        d, dev = self.dim, ctx.device
        self.user_emb = xavier_embedding(ctx.n_users, d, dev)  # [U, d]
        self.item_emb = xavier_embedding(ctx.n_items, d, dev)  # [I, d]

        u, i = unique_edges(ctx.train_users, ctx.train_items, ctx.n_users, ctx.n_items)
        # Derived, frozen graphs: plain attributes (not buffers) so DDP and checkpoints ignore them.
        self.adj = norm_adjacency(u, i, ctx.n_users, ctx.n_items)  # sparse [(U+I), (U+I)]
        self.R = norm_interactions(u, i, ctx.n_users, ctx.n_items)  # sparse [U, I]
        self.mm_adj = {m: knn_item_graph(ctx.features[m], p.knn_k, True, p.knn_block_size) for m in self.modalities}

        trainable = p.finetune_features
        self.feat = nn.ParameterDict(
            {m: nn.Parameter(ctx.features[m].float().clone(), requires_grad=trainable) for m in self.modalities}
        )
        self.proj = nn.ModuleDict({m: nn.Linear(self.feat[m].shape[1], d, device=dev) for m in self.modalities})
        self.purify_gate = nn.ModuleDict({m: _gate(d, dev) for m in self.modalities})
        self.prefer_gate = nn.ModuleDict({m: _gate(d, dev) for m in self.modalities})
        self.query = nn.Sequential(nn.Linear(d, d, device=dev), nn.Tanh(), nn.Linear(d, 1, bias=False, device=dev))
        # Views of the last propagate(), for the contrastive and L2 terms of loss().
        self._side: Tensor | None = None  # [(U+I), d]
        self._content: Tensor | None = None  # [(U+I), d]
        self._final: Tensor | None = None  # [(U+I), d]
        self._linear_at: tuple[list[Tensor], Tensor, list[Tensor]] | None = None  # gates of the last propagate()

    def _modality_view(self, items: Tensor, gate: Tensor, m: str) -> Tensor:
        """Purified item view of modality m propagated over its kNN graph, with users: [(U+I), d]."""
        h = items * gate  # [I, d]
        for _ in range(self.params.n_mm_layers):
            h = self.mm_adj[m].mm(h)
        return torch.cat([self.R.mm(h), h], dim=0)

    def _fuse(self, views: list[Tensor], att: Tensor, prefer: list[Tensor]) -> Tensor:
        """Behaviour-aware fuser: common part by attention, gated specific parts; returns the side view."""
        common = sum(att[:, j : j + 1] * v for j, v in enumerate(views))
        specific = sum(p * (v - common) for p, v in zip(prefer, views, strict=True))
        return (specific + common) / (len(views) + 1)

    def propagate(self, item_extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        items = self.item_emb if item_extra is None else self.item_emb + item_extra
        ego = torch.cat([self.user_emb, items], dim=0)  # [(U+I), d]
        content = lightgcn_propagate(self.adj, ego, self.n_ui_layers)  # user-item view
        gates = [self.purify_gate[m](self.proj[m](self.feat[m])) for m in self.modalities]  # M x [I, d]
        views = [self._modality_view(items, g, m) for g, m in zip(gates, self.modalities, strict=True)]
        att = torch.softmax(torch.cat([self.query(v) for v in views], dim=1), dim=1)  # [(U+I), M]
        prefer = [self.prefer_gate[m](content) for m in self.modalities]  # M x [(U+I), d]
        side = self._fuse(views, att, prefer)
        final = content + side
        self._side, self._content, self._final = side, content, final
        self._linear_at = (gates, att, prefer)
        return final[: self.n_users], final[self.n_users :]

    def propagate_extra(self, extra: Tensor) -> tuple[Tensor, Tensor]:
        """The part of the last propagate()'s output due to `extra`, with the attention and the purify and
        preference gates held at their values in that call: with them fixed the whole map is linear in the
        item input, so the ID part plus the parts of all extras add up exactly to that call's output."""
        if self._linear_at is None:
            raise RuntimeError("MGCN.propagate_extra() needs a preceding propagate() call")
        gates, att, prefer = self._linear_at
        ego = torch.cat([extra.new_zeros(self.n_users, extra.shape[1]), extra], dim=0)
        content = lightgcn_propagate(self.adj, ego, self.n_ui_layers)
        views = [self._modality_view(extra, g, m) for g, m in zip(gates, self.modalities, strict=True)]
        final = content + self._fuse(views, att, prefer)
        return final[: self.n_users], final[self.n_users :]

    def item_id_table(self) -> Tensor:
        return self.item_emb

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        if self._side is None or self._content is None or self._final is None:
            raise RuntimeError("MGCN.loss() needs the views of a preceding propagate() call")
        nu = self.n_users
        side, content, final = self._side, self._content, self._final
        t = self.params.temperature  # over the raw batch, repeats included, exactly as MMRec
        cl = info_nce(side[nu + pos], content[nu + pos], t) + info_nce(side[users], content[users], t)
        return {
            "bpr": bpr_loss(user_emb[users], item_emb[pos], item_emb[neg]),
            "reg": self.cfg.reg_weight * l2_reg(final[users], final[nu + pos], final[nu + neg]),
            "cl": self.params.cl_weight * cl,
        }
