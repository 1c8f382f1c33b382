"""BPR-MF (Rendle et al., UAI 2009): one free ID embedding per user and item, scored by dot product.

Why it is here: the ID-only floor every multimodal model must beat, and the cheapest backbone for
the MRdIB plug-in (whose content vector then carries all the multimodal signal).

Defaults (MMRec BPR.yaml): embedding_dim 64, reg_weight from `BackboneConfig.reg_weight`
(the L2 of the batch's embeddings, see `common.l2_reg`). No model-specific params.
"""

from __future__ import annotations

from torch import Tensor

from training.config import BackboneConfig
from training.models.base import Backbone, ModelContext
from training.models.common import ModelParams, bpr_loss, l2_reg, parse_params, xavier_embedding


class BPRParams(ModelParams):
    """BPR-MF has no knobs beyond `BackboneConfig`; the empty schema rejects stray keys."""


class BPRMF(Backbone):
    name = "bpr"
    uses_features = False

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__(ctx, cfg)
        self.params = parse_params(BPRParams, cfg, self.name)
        self.user_emb = xavier_embedding(ctx.n_users, self.dim, ctx.device)  # [U, d]
        self.item_emb = xavier_embedding(ctx.n_items, self.dim, ctx.device)  # [I, d]

    def propagate(self, item_extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb if item_extra is None else self.item_emb + item_extra

    def item_id_table(self) -> Tensor:
        return self.item_emb

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        """`user_emb`/`item_emb` are the full matrices from propagate() (item maybe plus MRdIB content)."""
        return {
            "bpr": bpr_loss(user_emb[users], item_emb[pos], item_emb[neg]),
            "reg": self.cfg.reg_weight * l2_reg(self.user_emb[users], self.item_emb[pos], self.item_emb[neg]),
        }
