"""The Recommender: one backbone plus (optionally) the MRdIB plug-in, behind the trainer's interface.

The trainer only ever sees this class (see notes/model_contract.md):

    model = build_recommender(cfg, ctx)
    model.on_epoch_start(epoch)
    out = model(users, pos, neg); out["loss"].backward(); opt.step()          # opt over main_parameters()
    for _ in range(cfg.mrdib.club_steps): model.aux_loss(users, pos, neg).backward(); aux_opt.step()
    U, I = model.embeddings(); emb = model.export()

forward() returns the loss dict (not scores) so that DistributedDataParallel can wrap the Recommender.

With MRdIB off (None or enabled=False) the Recommender owns no extra parameter, draws no extra random
number and computes exactly `sum(backbone.loss(users, pos, neg, *backbone.propagate()).values())`, so a
run is bit-for-bit the plain backbone's run.

With MRdIB on, the content vector P[s; u_1..u_M; z_syn] joins the backbone's item vectors in one of two
places (`MRdIBConfig.content_at`):

- "output": added to the item vectors propagate() returns. In training it is computed only for the
  batch's distinct items and scattered into a copy of the item table (index_add), so the cost does not
  grow with the catalogue beyond that copy.
- "ego" (graph backbones): added to the item ID table BEFORE propagation, as ../shared/docs/MRdIB.md
  section 3 reads: a user's vector then aggregates the content of the items it interacted with, which is
  what a user with 3-4 training items has most of. The whole catalogue's content is encoded every step
  (propagation needs every item). The auxiliary terms still see only the batch's distinct items. For a
  backbone that does not propagate, both places are the same and "output" is used.

Exported components in "ego" mode are the propagated parts: each content block is pushed through the
backbone on its own (`Backbone.propagate_extra`), and "collaborative" is the rest, so the components still
add up to the item vector and each says what that block contributes to the scores.

ID dropout (`MRdIBConfig.id_dropout`) zeroes, per step, the ID vectors of a random share of the batch's
distinct items (their backbone item vector in "output" mode, their ID row before propagation in "ego"
mode), so that the content path must rank those items alone: it is what serves the long tail.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from training.checkpoint import Embeddings
from training.config import MRdIBConfig, TrainConfig
from training.models.base import Backbone, ModelContext
from training.models.mrdib import MRdIB


class Recommender(nn.Module):
    """A backbone with the optional MRdIB plug-in; forward(users, pos, neg) is the training loss dict."""

    def __init__(self, backbone: Backbone, ctx: ModelContext, mrdib: MRdIBConfig | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_users, self.n_items = ctx.n_users, ctx.n_items
        self.mrdib: MRdIB | None = MRdIB(ctx, mrdib, backbone.dim) if mrdib is not None and mrdib.enabled else None
        self._aux_cache: tuple[Tensor, Tensor, list[Tensor], Tensor] | None = None

    # ------------------------------------------------------------------ training
    @property
    def content_before_propagation(self) -> bool:
        return (
            self.mrdib is not None and self.mrdib.cfg.content_at == "ego" and self.backbone.propagates_items
        )

    def _dropped_ids(self, items: Tensor) -> Tensor | None:
        """Catalogue rows among `items` whose ID vector this step zeroes (None: ID dropout off or eval)."""
        assert self.mrdib is not None
        rate = self.mrdib.cfg.id_dropout
        if rate <= 0.0 or not self.training:
            return None
        return items[torch.rand(len(items), device=items.device) < rate]

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """Loss terms of one batch of (user, positive item, negative item) triples; "loss" is the total."""
        if self.mrdib is None:
            user_emb, item_emb = self.backbone.propagate()
            terms = self.backbone.loss(users, pos, neg, user_emb, item_emb)
            total = sum(terms.values())
            assert isinstance(total, Tensor)
            return {"loss": total, **terms}

        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        pos_idx, neg_idx = inverse[: len(pos)], inverse[len(pos) :]
        dropped = self._dropped_ids(items)
        if self.content_before_propagation:
            full = self.mrdib.encode(torch.arange(self.n_items, device=items.device), sample=self.training)
            extra = full.content
            table = self.backbone.item_id_table()
            if dropped is not None and table is not None and len(dropped):
                extra = extra.index_add(0, dropped, -table[dropped].to(extra.dtype))
            user_emb, item_emb = self.backbone.propagate(item_extra=extra)
            state = full.select(items)  # the auxiliary terms see the batch's distinct items only
        else:
            user_emb, item_emb = self.backbone.propagate()
            state = self.mrdib.encode(items, sample=self.training)
            if dropped is not None and len(dropped):
                item_emb = item_emb.index_add(0, dropped, -item_emb[dropped])
            # cast: under bf16 autocast the content comes out of Linear layers in bf16, the table may be fp32
            item_emb = item_emb.index_add(0, state.items, state.content.to(item_emb.dtype))
        terms = self.backbone.loss(users, pos, neg, user_emb, item_emb)
        total = sum(terms.values())
        extra_terms = self.mrdib.losses(state, user_emb[users], pos_idx, neg_idx)
        if self.mrdib.aux_parameters():
            # what aux_loss needs, detached: saves re-encoding the same batch for the CLUB step
            self._aux_cache = (pos, neg, [u.detach() for u in state.unique], state.shared.detach())
        weighted = self.mrdib.weighted_total(extra_terms)
        if weighted is not None:
            total = total + weighted
        assert isinstance(total, Tensor)
        return {"loss": total, **terms, **extra_terms}

    def aux_loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor | None:
        """The CLUB estimators' own objective on this batch (only aux parameters get gradients); None if none."""
        if self.mrdib is None or not self.mrdib.aux_parameters():
            return None
        cache = self._aux_cache
        if cache is not None and _same(cache[0], pos) and _same(cache[1], neg):
            # the codes of this batch from forward(), i.e. before the main optimiser step: the alternating
            # scheme of Cheng et al. fits q on the current minibatch's samples, which these are
            unique, shared = cache[2], cache[3]
        else:
            with torch.no_grad():
                items = torch.unique(torch.cat([pos, neg]))
                state = self.mrdib.encode(items, sample=self.training)
            unique, shared = state.unique, state.shared
        return self.mrdib.club_objective(unique, shared)

    def aux_parameters(self) -> list[nn.Parameter]:
        return [] if self.mrdib is None else self.mrdib.aux_parameters()

    def main_parameters(self) -> list[nn.Parameter]:
        aux = {id(p) for p in self.aux_parameters()}
        return [p for p in self.parameters() if id(p) not in aux]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Adam parameter groups: everything at `weight_decay`, the plug-in's own main parameters at
        `weight_decay + mrdib.weight_decay` (weight decay on the encoders instead of, or besides, the
        content_reg penalty on their output)."""
        extra = 0.0 if self.mrdib is None else self.mrdib.cfg.weight_decay
        if extra <= 0.0:
            return [{"params": self.main_parameters(), "weight_decay": weight_decay}]
        assert self.mrdib is not None
        aux = {id(p) for p in self.aux_parameters()}
        plugin = [p for p in self.mrdib.parameters() if id(p) not in aux]
        own = {id(p) for p in plugin}
        rest = [p for p in self.main_parameters() if id(p) not in own]
        return [
            {"params": rest, "weight_decay": weight_decay},
            {"params": plugin, "weight_decay": weight_decay + extra},
        ]

    def on_epoch_start(self, epoch: int) -> None:
        self.backbone.on_epoch_start(epoch)

    # ------------------------------------------------------------------ evaluation / export
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode + no_grad for the duration, then the previous mode back (graph models drop edges in train)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _components(self) -> tuple[Tensor, dict[str, Tensor]]:
        if self.mrdib is None:
            user, item = self.backbone.propagate()
            return user, {"collaborative": item}
        parts = self.mrdib.catalogue_parts(self.n_items)
        if not self.content_before_propagation:
            user, item = self.backbone.propagate()
            return user, {"collaborative": item, **parts}
        # content before propagation: each block's propagated share; the ID part is the rest (exact by
        # linearity for LightGCN/FREEDOM, by construction for MGCN's linearisation)
        user, item = self.backbone.propagate(item_extra=self._sum(parts))
        shares = {name: self.backbone.propagate_extra(p)[1] for name, p in parts.items()}
        collaborative = item
        for share in shares.values():
            collaborative = collaborative - share
        return user, {"collaborative": collaborative, **shares}

    @staticmethod
    def _sum(comps: dict[str, Tensor]) -> Tensor:
        # left-to-right in export order, so the exported item vector is exactly the sum of its components
        it = iter(comps.values())
        total = next(it)
        for c in it:
            total = total + c
        return total

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final (U [n_users, d], I [n_items, d]) for evaluation: eval mode, deterministic (z = mu)."""
        with self._eval_mode():
            user, comps = self._components()
            # detached: an MF backbone's propagate() returns its Parameters themselves
            return user.detach(), self._sum(comps).detach()

    @torch.no_grad()
    def export(self) -> Embeddings:
        """User and item vectors plus the item components: collaborative, shared, unique:<m>, synergy."""
        with self._eval_mode():
            user, comps = self._components()
            item = self._sum(comps)

        def np32(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        return Embeddings(user=np32(user), item=np32(item), components={k: np32(v) for k, v in comps.items()})

    def component_representations(self) -> dict[str, Tensor]:
        """Per-item plug-in codes (z:<m>, shared, unique:<m>, synergy), deterministic; {} without MRdIB."""
        if self.mrdib is None:
            return {}
        with self._eval_mode():
            return self.mrdib.representations(self.n_items)


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def build_recommender(cfg: TrainConfig, ctx: ModelContext) -> Recommender:
    """Backbone first (so its initialisation draws the same random numbers as a plain run), then the plug-in."""
    from training.models.registry import build_backbone  # late: the registry imports every backbone module

    backbone = build_backbone(ctx, cfg.backbone)
    return Recommender(backbone, ctx, cfg.mrdib if cfg.mrdib.enabled else None)
