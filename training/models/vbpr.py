"""VBPR (He & McAuley, AAAI 2016): BPR-MF whose item vector also carries a learned linear
projection of the item's content features.

Why: the simplest multimodal backbone; it shows how much raw content helps before any graph.
Item vector = [ID embedding (id_dim) ; W x_i + b (d - id_dim)], x_i = concatenation of all
modalities' features in context order (any number >= 1). User vector = one free embedding [d].

Deviation from MMRec, on purpose: MMRec's VBPR outputs 2*embedding_size (64 ID + 64 content).
The model contract fixes every backbone's output width to `embedding_dim` (the MRdIB content
vector is added to it), so the width is split instead: id_dim (default embedding_dim // 2) for the
ID part, the rest for the content projection.

Params (`BackboneConfig.params`):
    id_dim: int | None = None   -> embedding_dim // 2; must leave >= 1 dim for the content part.
reg_weight (`BackboneConfig.reg_weight`, MMRec grid 1e-5..2): L2 on the batch's user and item ID rows.
"""

from __future__ import annotations

import torch
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


class VBPRParams(ModelParams):
    id_dim: int | None = Field(None, ge=1, description="width of the ID part; default embedding_dim // 2")


class VBPR(Backbone):
    name = "vbpr"
    uses_features = True

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__(ctx, cfg)
        self.params = parse_params(VBPRParams, cfg, self.name)
        self.modalities = require_modalities(ctx, self.name)
        self.id_dim = self.params.id_dim if self.params.id_dim is not None else self.dim // 2
        if not 1 <= self.id_dim < self.dim:
            raise ValueError(
                f"backbone 'vbpr': id_dim must lie in [1, embedding_dim - 1] = [1, {self.dim - 1}], got {self.id_dim}"
            )
        # Frozen input data, kept as a plain attribute (not a parameter, not in the state dict).
        self.raw = torch.cat([ctx.features[m].float() for m in self.modalities], dim=1)  # [I, sum d_m]
        self.user_emb = xavier_embedding(ctx.n_users, self.dim, ctx.device)  # [U, d]
        self.item_emb = xavier_embedding(ctx.n_items, self.id_dim, ctx.device)  # [I, id_dim]
        self.proj = nn.Linear(self.raw.shape[1], self.dim - self.id_dim, device=ctx.device)
        nn.init.xavier_normal_(self.proj.weight)  # MMRec's xavier_normal_initialization
        nn.init.zeros_(self.proj.bias)

    def propagate(self) -> tuple[Tensor, Tensor]:
        items = torch.cat([self.item_emb, self.proj(self.raw)], dim=1)  # [I, d]
        return self.user_emb, items

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        return {
            "bpr": bpr_loss(user_emb[users], item_emb[pos], item_emb[neg]),
            "reg": self.cfg.reg_weight * l2_reg(self.user_emb[users], self.item_emb[pos], self.item_emb[neg]),
        }
