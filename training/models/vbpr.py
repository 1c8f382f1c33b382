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
    reg_on: "id" | "full"       what reg_weight penalises: the batch's user and item ID rows ("id"), or the
                                user rows and the WHOLE item vectors, content projection included ("full",
                                MMRec's choice: it also regularises the content path).
    reg_form: "squared" | "norm"   0.5 * squared norms / batch (`common.l2_reg`, this project's form), or
                                MMRec's EmbLoss, un-squared Frobenius norms / batch (`common.norm_reg`).
reg_weight (`BackboneConfig.reg_weight`, MMRec grid 1e-5..2): weight of that penalty.
MMRec's own VBPR is `embedding_dim: 128, params: {id_dim: 64, reg_on: full, reg_form: norm}` here: a 128-d
user vector against [64-d ID ; 64-d content] items.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from training.config import BackboneConfig
from training.models.base import Backbone, ModelContext
from training.models.common import (
    ModelParams,
    bpr_loss,
    l2_reg,
    norm_reg,
    parse_params,
    require_modalities,
    xavier_embedding,
)


class VBPRParams(ModelParams):
    id_dim: int | None = Field(None, ge=1, description="width of the ID part; default embedding_dim // 2")
    reg_on: Literal["id", "full"] = "id"
    reg_form: Literal["squared", "norm"] = "squared"


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

    def propagate(self, item_extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        items = torch.cat([self.item_emb, self.proj(self.raw)], dim=1)  # [I, d]
        return self.user_emb, items if item_extra is None else items + item_extra

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        if self.params.reg_on == "full":  # the backbone's own item vectors (ID ; projection), never MRdIB's content
            own = torch.cat([self.item_emb[torch.cat([pos, neg])], self.proj(self.raw[torch.cat([pos, neg])])], 1)
            rows = (self.user_emb[users], own[: len(pos)], own[len(pos) :])
        else:
            rows = (self.user_emb[users], self.item_emb[pos], self.item_emb[neg])
        reg = l2_reg(*rows) if self.params.reg_form == "squared" else norm_reg(*rows)
        return {"bpr": bpr_loss(user_emb[users], item_emb[pos], item_emb[neg]), "reg": self.cfg.reg_weight * reg}
