"""Name -> backbone class, and the one constructor the Recommender calls.

Why a registry: configs name backbones by string (BackboneConfig.name); the trainer and the
MRdIB Recommender must not import model files or branch on names.
"""

from __future__ import annotations

from training.config import BackboneConfig
from training.models.base import Backbone, ModelContext
from training.models.bpr import BPRMF
from training.models.freedom import FREEDOM
from training.models.lightgcn import LightGCN
from training.models.mgcn import MGCN
from training.models.vbpr import VBPR

BACKBONES: dict[str, type[Backbone]] = {
    "bpr": BPRMF,
    "lightgcn": LightGCN,
    "vbpr": VBPR,
    "freedom": FREEDOM,
    "mgcn": MGCN,
}


def build_backbone(ctx: ModelContext, cfg: BackboneConfig) -> Backbone:
    """Construct the configured backbone on ctx.device (parameter init draws from torch's global RNG)."""
    try:
        cls = BACKBONES[cfg.name]
    except KeyError:
        raise ValueError(f"unknown backbone {cfg.name!r}; known: {sorted(BACKBONES)}") from None
    return cls(ctx, cfg)
