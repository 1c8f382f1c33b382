"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user-item graph.

Why: the standard ID-only graph baseline, and the propagation FREEDOM and MGCN build upon.
E_{l+1} = D^-1/2 A D^-1/2 E_l on the bipartite graph of TRAINING interactions only; the output is
the mean of E_0..E_L (layer 0 included). No feature transforms, no non-linearities.

Defaults (MMRec LightGCN.yaml): embedding_dim 64, n_layers from `BackboneConfig.n_layers`
(project default 2; MMRec searches 1-4), reg_weight = L2 on the batch's EGO embeddings (layer 0).
No model-specific params.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.config import BackboneConfig
from training.models.base import IdGraphBackbone, ModelContext
from training.models.common import ModelParams, bpr_loss, l2_reg, parse_params, xavier_embedding
from training.models.graph import lightgcn_propagate, norm_adjacency, unique_edges


class LightGCNParams(ModelParams):
    """LightGCN has no knobs beyond `BackboneConfig`; the empty schema rejects stray keys."""


class LightGCN(IdGraphBackbone):
    name = "lightgcn"
    uses_features = False

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__(ctx, cfg)
        self.params = parse_params(LightGCNParams, cfg, self.name)
        self.n_layers = cfg.n_layers
        self.user_emb = xavier_embedding(ctx.n_users, self.dim, ctx.device)  # [U, d]
        self.item_emb = xavier_embedding(ctx.n_items, self.dim, ctx.device)  # [I, d]
        u, i = unique_edges(ctx.train_users, ctx.train_items, ctx.n_users, ctx.n_items)
        # Plain attribute, not a buffer: a sparse buffer would break DDP's buffer broadcast and
        # the checkpoint (it is derived data, rebuilt from the training interactions).
        self.adj = norm_adjacency(u, i, ctx.n_users, ctx.n_items)  # sparse [(U+I), (U+I)]

    def _propagate(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        out = lightgcn_propagate(self.adj, torch.cat([users, items], dim=0), self.n_layers)  # [(U+I), d]
        return out[: self.n_users], out[self.n_users :]

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        return {
            "bpr": bpr_loss(user_emb[users], item_emb[pos], item_emb[neg]),
            "reg": self.cfg.reg_weight * l2_reg(self.user_emb[users], self.item_emb[pos], self.item_emb[neg]),
        }
