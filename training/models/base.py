"""The small interface every backbone implements, and what it is given.

Contract (shared by the backbones, the MRdIB plug-in, the trainer and the exporter):

- A backbone is built from a `ModelContext` (sizes, training interactions, item features,
  device) and a `BackboneConfig`.
- `propagate(item_extra=None)` returns the full user and item representations (U [n_users, d],
  I [n_items, d]) for the current parameters: a lookup for MF models, graph propagation for
  graph models. It is called once per training step and once before evaluation. `item_extra`
  [n_items, d] is added to the item ID table at the INPUT of propagation (MRdIB's "content before
  propagation": a graph model then carries an item's content to its users and neighbours); a
  backbone that does not propagate adds it to its output, which is the same thing for it.
- `propagate_extra(extra)` is the part of (U, I) that an `item_extra` of `extra` alone contributes.
  Graph propagation is linear in its input for LightGCN and FREEDOM, so the exported item vector
  splits exactly into an ID part and one part per content component; MGCN's gates are not linear,
  and it returns the linearisation at its last propagate() call (gates held at their values there),
  which still sums exactly to the real output.
- `loss(users, pos, neg, user_emb, item_emb)` returns the backbone's own loss terms as a
  dict of scalar tensors (at least "bpr"; also "reg" and model-specific terms). The caller
  sums them. `item_emb` may already include the MRdIB content vector (added at the output).
- `on_epoch_start(epoch)` lets a model resample per-epoch structure (FREEDOM's degree-
  sensitive edge pruning) without the trainer knowing about it.
- Scores are always <U[u], I[i]>.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from training.config import BackboneConfig
from training.data.dataset import TRAIN, InteractionDataset


@dataclass
class ModelContext:
    """Everything a model may know about the data. Tensors live on `device`."""

    n_users: int
    n_items: int
    train_users: Tensor  # int64 [n_train]
    train_items: Tensor  # int64 [n_train]
    features: dict[str, Tensor]  # modality -> float32 [n_items, d_m]
    device: torch.device

    @classmethod
    def from_dataset(cls, ds: InteractionDataset, device: torch.device | str = "cpu") -> ModelContext:
        device = torch.device(device)
        u, i = ds.split_pairs(TRAIN)
        return cls(
            n_users=ds.n_users,
            n_items=ds.n_items,
            train_users=torch.as_tensor(np.asarray(u, dtype=np.int64), device=device),
            train_items=torch.as_tensor(np.asarray(i, dtype=np.int64), device=device),
            features={m: torch.as_tensor(x, device=device) for m, x in ds.features.items()},
            device=device,
        )


class Backbone(nn.Module):
    """Base class of all backbones. See the module docstring for the contract."""

    name: str = "base"
    uses_features: bool = False
    #: True for graph backbones: `item_extra` enters their propagation, not only their output.
    propagates_items: bool = False

    def __init__(self, ctx: ModelContext, cfg: BackboneConfig) -> None:
        super().__init__()
        self.n_users, self.n_items = ctx.n_users, ctx.n_items
        self.cfg = cfg
        self.dim = cfg.embedding_dim

    def propagate(self, item_extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def propagate_extra(self, extra: Tensor) -> tuple[Tensor, Tensor]:
        """(U_part, I_part): what `propagate(item_extra=extra)` adds to `propagate()`; default: output only."""
        return extra.new_zeros(self.n_users, extra.shape[1]), extra

    def item_id_table(self) -> Tensor | None:
        """The free item ID vectors [n_items, d] that propagation starts from (ID dropout zeroes rows of it
        before propagation); None when the backbone's item input is not such a table."""
        return None

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor, user_emb: Tensor, item_emb: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        pass


class IdGraphBackbone(Backbone):
    """A graph backbone whose propagation starts from free user/item ID tables (`user_emb`, `item_emb`) and is
    linear in them: `_propagate(users, items)` is the whole model, so content added to the item table before
    propagation, and its share of the output, follow from that one function."""

    propagates_items = True
    user_emb: nn.Parameter
    item_emb: nn.Parameter

    def propagate(self, item_extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        items = self.item_emb if item_extra is None else self.item_emb + item_extra
        return self._propagate(self.user_emb, items)

    def propagate_extra(self, extra: Tensor) -> tuple[Tensor, Tensor]:
        return self._propagate(extra.new_zeros(self.n_users, extra.shape[1]), extra)

    def item_id_table(self) -> Tensor:
        return self.item_emb

    def _propagate(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError
