"""FREEDOM (Zhou & Shen, ACM MM 2023): "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation".

Why this design (from the paper):
- Freezing: LATTICE re-learns an item-item graph from features every step; FREEDOM shows that the
  kNN graph built ONCE from the raw features works as well and is far cheaper. One top-k cosine
  graph per modality (binary edges, D^-1/2 A D^-1/2 with row degrees), mixed with fixed weights,
  frozen for the whole run. Item ID embeddings are propagated over it (n_mm_layers hops).
- Denoising: implicit feedback is noisy, and hubs dominate propagation. Every epoch a fraction
  `dropout` of user-item edges is pruned; the kept edges are sampled without replacement with
  probability proportional to 1/sqrt(d_u d_i), so edges between high-degree nodes are pruned more
  often. LightGCN propagation (BackboneConfig.n_layers, MMRec n_ui_layers=2) runs on the pruned
  graph during training and on the full training graph at evaluation (`self.training` False).
- Final item = LightGCN item + item-graph item; final user = LightGCN user.
- Loss = BPR + reg_weight * sum_m BPR(user, W_m x_pos, W_m x_neg): each modality's projected
  features must rank the user's positives too, which trains the projections and ties the user
  vectors to content. FREEDOM has no L2 term ("reg" is reported as 0).

Params (`BackboneConfig.params`, MMRec FREEDOM.yaml defaults):
    knn_k: 10                  neighbours per item in each modality graph
    n_mm_layers: 1             hops over the item-item graph
    dropout: 0.8               fraction of user-item edges PRUNED per epoch (MMRec semantics: kept =
                               int(n_edges * (1 - dropout)); MMRec searches 0.8 and 0.9)
    mm_image_weight: 0.1       image graph weight when the modalities are exactly {image, text}
                               (text gets 0.9); any other set of modalities is mixed uniformly
    modality_weights: None     explicit {modality: weight} (normalised to sum 1), overrides the above
    finetune_features: True    raw features are trainable inputs of the projections, as MMRec's
                               nn.Embedding.from_pretrained(freeze=False); the kNN graph is built
                               from the original features regardless
    knn_block_size: None       rows per similarity block when building the kNN graph (None: auto)
reg_weight (`BackboneConfig.reg_weight`, MMRec grid 0..1e-3): weight of the modality BPR terms.
Feature projections map to embedding_dim (MMRec feat_embed_dim = embedding_size = 64).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from training.config import BackboneConfig
from training.models.base import IdGraphBackbone, ModelContext
from training.models.common import ModelParams, bpr_loss, parse_params, require_modalities, xavier_embedding
from training.models.graph import (
    SparseMatrix,
    bipartite_norm_values,
    knn_item_graph,
    lightgcn_propagate,
    mix_graphs,
    norm_adjacency,
    sample_edges,
    unique_edges,
)


class FreedomParams(ModelParams):
    knn_k: int = Field(10, ge=1)
    n_mm_layers: int = Field(1, ge=0)
    dropout: float = Field(0.8, ge=0.0, lt=1.0, description="fraction of user-item edges pruned per epoch")
    mm_image_weight: float = Field(0.1, ge=0.0, le=1.0)
    modality_weights: dict[str, float] | None = None
    finetune_features: bool = True
    knn_block_size: int | None = Field(None, ge=1)


def modality_mix_weights(modalities: list[str], p: FreedomParams) -> list[float]:
    """Graph mixing weights in `modalities` order (see the module docstring), summing to 1."""
    if p.modality_weights is not None:
        if set(p.modality_weights) != set(modalities):
            raise ValueError(
                f"backbone 'freedom': modality_weights names {sorted(p.modality_weights)}, "
                f"but the dataset's modalities are {sorted(modalities)}"
            )
        w = [float(p.modality_weights[m]) for m in modalities]
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"backbone 'freedom': modality_weights must be >= 0 with a positive sum, got {w}")
    elif set(modalities) == {"image", "text"}:
        w = [p.mm_image_weight if m == "image" else 1.0 - p.mm_image_weight for m in modalities]
    else:
        w = [1.0] * len(modalities)
    total = sum(w)
    return [x / total for x in w]


class FREEDOM(IdGraphBackbone):
    name = "freedom"
    uses_features = True

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__(ctx, cfg)
        self.params = p = parse_params(FreedomParams, cfg, self.name)
        self.modalities = require_modalities(ctx, self.name)
        self.n_ui_layers = cfg.n_layers
        self.user_emb = xavier_embedding(ctx.n_users, self.dim, ctx.device)  # [U, d]
        self.item_emb = xavier_embedding(ctx.n_items, self.dim, ctx.device)  # [I, d]

        # Frozen, mixed item-item graph (derived data: plain attributes, not buffers/state).
        self.mix_weights = modality_mix_weights(self.modalities, p)
        graphs = [knn_item_graph(ctx.features[m], p.knn_k, False, p.knn_block_size) for m in self.modalities]
        self.mm_adj = mix_graphs(graphs, self.mix_weights)  # sparse [I, I]

        # Modality features (trainable copies when finetune_features) and their projections to d.
        feats = {m: ctx.features[m].float().clone() for m in self.modalities}
        self.feat = nn.ParameterDict({m: nn.Parameter(x, requires_grad=p.finetune_features) for m, x in feats.items()})
        self.proj = nn.ModuleDict({m: nn.Linear(x.shape[1], self.dim, device=ctx.device) for m, x in feats.items()})

        # Training user-item graph: full (for evaluation) and the per-epoch pruned one.
        self.edge_users, self.edge_items = unique_edges(ctx.train_users, ctx.train_items, ctx.n_users, ctx.n_items)
        self.edge_weights = bipartite_norm_values(self.edge_users, self.edge_items, ctx.n_users, ctx.n_items)
        self.full_adj = norm_adjacency(self.edge_users, self.edge_items, ctx.n_users, ctx.n_items)
        self.masked_adj: SparseMatrix | None = None

    @property
    def n_keep(self) -> int:
        """User-item edges kept after pruning: int(n_edges * (1 - dropout)), as MMRec."""
        return int(self.edge_users.numel() * (1.0 - self.params.dropout))

    def on_epoch_start(self, epoch: int) -> None:
        """Resample the degree-sensitive pruned user-item graph (torch's global RNG)."""
        if self.params.dropout <= 0.0:
            self.masked_adj = self.full_adj
            return
        keep = sample_edges(self.edge_weights, self.n_keep)
        self.masked_adj = norm_adjacency(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)

    def _propagate(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """LightGCN over the (pruned, in training) user-item graph plus the item-item view; linear in both inputs."""
        if self.training:
            if self.masked_adj is None:  # trainer skipped on_epoch_start: sample once now
                self.on_epoch_start(0)
            adj = self.masked_adj
        else:
            adj = self.full_adj
        h = items  # [I, d] item-item view
        for _ in range(self.params.n_mm_layers):
            h = self.mm_adj.mm(h)
        out = lightgcn_propagate(adj, torch.cat([users, items], dim=0), self.n_ui_layers)  # [(U+I), d]
        return out[: self.n_users], out[self.n_users :] + h

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        u = user_emb[users]  # [b, d]
        modal = torch.zeros((), device=u.device)
        for m in self.modalities:
            x, proj = self.feat[m], self.proj[m]
            # Projecting only the batch rows equals MMRec's project-all-then-index, at a fraction of the cost.
            modal = modal + bpr_loss(u, proj(x[pos]), proj(x[neg]))
        return {
            "bpr": bpr_loss(u, item_emb[pos], item_emb[neg]),
            "modal": self.cfg.reg_weight * modal,
            "reg": torch.zeros((), device=u.device),
        }
