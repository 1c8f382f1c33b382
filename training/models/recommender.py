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

With MRdIB on, the content vector P[s; u_1..u_M; z_syn] is added to the backbone's item vectors at the
output of propagate(). In training it is computed only for the batch's distinct items and scattered
into a copy of the item table (index_add), so the cost does not grow with the catalogue beyond that copy.
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
from training.models.mrdib import MRdIB, PluginState


class Recommender(nn.Module):
    """A backbone with the optional MRdIB plug-in; forward(users, pos, neg) is the training loss dict."""

    def __init__(self, backbone: Backbone, ctx: ModelContext, mrdib: MRdIBConfig | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_users, self.n_items = ctx.n_users, ctx.n_items
        self.mrdib: MRdIB | None = MRdIB(ctx, mrdib, backbone.dim) if mrdib is not None and mrdib.enabled else None
        self._aux_cache: tuple[Tensor, Tensor, list[Tensor], Tensor] | None = None

    # ------------------------------------------------------------------ training
    def _plugin_state(self, pos: Tensor, neg: Tensor, sample: bool) -> tuple[PluginState, Tensor, Tensor]:
        assert self.mrdib is not None
        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        state = self.mrdib.encode(items, sample=sample)
        return state, inverse[: len(pos)], inverse[len(pos) :]

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """Loss terms of one batch of (user, positive item, negative item) triples; "loss" is the total."""
        user_emb, item_emb = self.backbone.propagate()
        if self.mrdib is None:
            terms = self.backbone.loss(users, pos, neg, user_emb, item_emb)
            total = sum(terms.values())
        else:
            state, pos_idx, neg_idx = self._plugin_state(pos, neg, sample=self.training)
            # cast: under bf16 autocast the content comes out of Linear layers in bf16, the table may be fp32
            item_emb = item_emb.index_add(0, state.items, state.content.to(item_emb.dtype))
            terms = self.backbone.loss(users, pos, neg, user_emb, item_emb)
            total = sum(terms.values())
            extra = self.mrdib.losses(state, user_emb[users], pos_idx, neg_idx)
            if self.mrdib.aux_parameters():
                # what aux_loss needs, detached: saves re-encoding the same batch for the CLUB step
                self._aux_cache = (pos, neg, [u.detach() for u in state.unique], state.shared.detach())
            weighted = self.mrdib.weighted_total(extra)
            if weighted is not None:
                total = total + weighted
            terms = {**terms, **extra}
        assert isinstance(total, Tensor)
        return {"loss": total, **terms}

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
                state, _, _ = self._plugin_state(pos, neg, sample=self.training)
            unique, shared = state.unique, state.shared
        return self.mrdib.club_objective(unique, shared)

    def aux_parameters(self) -> list[nn.Parameter]:
        return [] if self.mrdib is None else self.mrdib.aux_parameters()

    def main_parameters(self) -> list[nn.Parameter]:
        aux = {id(p) for p in self.aux_parameters()}
        return [p for p in self.parameters() if id(p) not in aux]

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
        user, item = self.backbone.propagate()
        comps = {"collaborative": item}
        if self.mrdib is not None:
            comps.update(self.mrdib.catalogue_parts(self.n_items))
        return user, comps

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
