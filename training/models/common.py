"""Small pieces every backbone shares: the BPR and L2 terms, typed params, modality checks.

Why a module of its own: the backbones must score and regularise the same way (so that their
numbers compare), and each validates `BackboneConfig.params` with pydantic so that a typo in a
config file fails at construction with the backbone's name, not as a silent default.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from training.config import BackboneConfig
from training.models.base import ModelContext


class ModelParams(BaseModel):
    """Base of each backbone's `params` schema: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=ModelParams)


def parse_params(schema: type[P], cfg: BackboneConfig, model: str) -> P:
    """Validate `cfg.params` against `schema`; the error names the backbone and the bad key."""
    try:
        return schema.model_validate(cfg.params)
    except ValidationError as exc:
        raise ValueError(f"backbone {model!r}: invalid backbone.params: {exc}") from exc


def require_modalities(ctx: ModelContext, model: str) -> list[str]:
    """Modality names in context order; a multimodal backbone without features is a config error."""
    names = list(ctx.features)
    if not names:
        raise ValueError(f"backbone {model!r} uses item features but the dataset has 0 modalities")
    for m, x in ctx.features.items():
        if x.ndim != 2 or x.shape[0] != ctx.n_items:
            raise ValueError(f"backbone {model!r}: features[{m!r}] must be [{ctx.n_items}, d], got {tuple(x.shape)}")
    return names


def bpr_loss(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Mean BPR loss -log sigmoid(<u,p> - <u,n>) over a batch of row vectors [b, d].

    logsigmoid is the numerically stable form of MMRec's -log(1e-10 + sigmoid(.)).
    """
    diff = (u * pos).sum(-1) - (u * neg).sum(-1)  # [b]
    return -F.logsigmoid(diff).mean()


def l2_reg(*rows: Tensor) -> Tensor:
    """0.5 * sum of squared entries of the given batch rows, divided by the batch size.

    The LightGCN paper's per-batch L2 on ego embeddings (MMRec's EmbLoss uses un-squared norms;
    the squared form is the usual one and gives weight-decay-like gradients).
    """
    batch = rows[0].shape[0]
    return sum((r.pow(2).sum() for r in rows), torch.zeros((), device=rows[0].device)) / (2.0 * max(batch, 1))


def norm_reg(*rows: Tensor) -> Tensor:
    """Sum of the batch matrices' Frobenius norms (NOT squared), divided by the batch size: MMRec's EmbLoss.

    Kept beside `l2_reg` because MMRec's VBPR grid is expressed in this form: its per-row gradient is
    x / (|X|_F * batch), i.e. about 1/|X|_F of `l2_reg`'s, so the same reg_weight means a much weaker pull.
    """
    batch = rows[0].shape[0]
    return sum((r.norm() for r in rows), torch.zeros((), device=rows[0].device)) / max(batch, 1)


def xavier_embedding(n: int, d: int, device: torch.device) -> torch.nn.Parameter:
    """An [n, d] embedding table with MMRec's xavier-uniform init (draws from torch's global RNG)."""
    return torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n, d, device=device)))
