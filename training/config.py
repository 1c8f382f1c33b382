"""Typed training configuration: one object, read from a YAML/TOML file, overridden from the CLI.

The field defaults follow the MMRec family's published settings (embedding 64, Adam lr 1e-3, batch 2048,
early stopping on validation Recall@20) so numbers compare with the literature. `load_config` lays the
settings VALIDATED for the chosen backbone (training/presets.py, with or without the plug-in) over them,
then the config file, then the overrides: `mrdib train --backbone freedom --mrdib` with nothing else gets
the settings the equal-budget study chose on validation, not the literature's generic ones.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

BackboneName = Literal["bpr", "lightgcn", "vbpr", "freedom", "mgcn"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Cfg):
    """Backbone architecture. Model-specific knobs live in `params` (documented in each model file)."""

    name: BackboneName = "freedom"
    embedding_dim: int = Field(64, ge=1, le=4096)
    n_layers: int = Field(2, ge=0, le=8, description="user-item graph propagation layers (graph models)")
    reg_weight: float = Field(1e-4, ge=0.0, description="L2 on the batch's ego embeddings")
    params: dict[str, Any] = Field(default_factory=dict)


class MRdIBConfig(_Cfg):
    """The MRdIB plug-in (../shared/docs/MRdIB.md). Every term can be switched off and weighted."""

    enabled: bool = True
    hidden_dim: int = Field(128, ge=1)
    shared_dim: int = Field(32, ge=1)
    unique_dim: int = Field(32, ge=1)
    synergy_dim: int = Field(32, ge=1)
    use_ib: bool = True
    use_unique: bool = True
    use_redundant: bool = True
    use_synergy: bool = True
    beta: float = Field(1e-3, ge=0.0, description="weight of the KL (compression) term")
    lambda_u: float = Field(0.01, ge=0.0)
    lambda_r: float = Field(0.01, ge=0.0)
    lambda_s: float = Field(0.01, ge=0.0)
    temperature: float = Field(0.2, gt=0.0)
    club_steps: int = Field(1, ge=0, description="CLUB estimator updates per training step")
    club_lr: float = Field(1e-3, gt=0.0)
    redundancy_estimator: Literal["club", "hsic", "dcor", "cka"] = "hsic"
    synergy_mask: Literal["zero", "noise"] = "zero"
    latent_dim: int = Field(64, ge=1, description="size of each modality's bottleneck code z_m")
    club_hidden_dim: int = Field(64, ge=1, description="hidden width of each CLUB variational network q(y|x)")
    dependence_weight: float = Field(1.0, ge=0.0, description="weight of the u-s / u-u dependence penalty in L_red")
    contrastive_max: int = Field(
        128, ge=2, description="in-batch rows used by InfoNCE / HSIC / dCor terms (random subset; caps O(n^2) cost)"
    )
    lambda_ib: float = Field(0.1, ge=0.0, description="weight of the sufficiency BPR terms in L_IB")
    init_scale: float = Field(
        0.1, ge=0.0, description="P (content projection) initialised at this multiple of the default init"
    )
    content_reg: float = Field(0.1, ge=0.0, description="L2 on the batch items' content vectors (like reg_weight)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on each encoder's hidden layer (training only)")
    detach_user: bool = Field(False, description="auxiliary terms see e_u detached (only BPR moves user vectors)")
    content_at: Literal["output", "ego"] = Field(
        "output",
        description="where the content vector joins a graph backbone: 'ego' adds it to the item ID table BEFORE "
        "propagation (users and neighbours aggregate it), 'output' adds it to the propagated item vector",
    )
    normalize_terms: bool = Field(
        False,
        description="divide each auxiliary term by its value at chance (InfoNCE log n, BPR log 2, dependence and "
        "synergy penalties by their count) so that the lambdas weigh terms of the same scale",
    )
    synergy_penalty: Literal["sigmoid_sq", "logcosh"] = Field(
        "sigmoid_sq",
        description="penalty on the masked synergy branch's margin m: (sigmoid(m) - 0.5)^2 (saturates for large "
        "|m|) or log cosh(m) (gradient tanh(m), which does not vanish)",
    )
    id_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of a batch's items whose ID vector is zeroed (content must rank them)"
    )
    weight_decay: float = Field(0.0, ge=0.0, description="Adam weight decay (L2) on the plug-in's own parameters")
    input_pca: int = Field(
        0, ge=0, description="reduce each modality wider than this to its top principal components (0 = off)"
    )


class TrainConfig(_Cfg):
    validated_defaults: bool = Field(
        True,
        description="lay the settings validated for this backbone (training/presets.py) under the config file "
        "and overrides; false = the plain field defaults",
    )
    data: str | None = None
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    mrdib: MRdIBConfig = Field(default_factory=lambda: MRdIBConfig(enabled=False))
    seed: int = 2024
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(2048, ge=1)
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="when set, the batch size is the training interactions / steps_per_epoch (rounded up) "
        "instead of batch_size: a setting validated on one catalogue keeps its updates per epoch on another",
    )
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    patience: int = Field(20, ge=1, description="epochs without validation improvement before stopping")
    eval_every: int = Field(1, ge=1)
    valid_metric: str = "recall@20"
    topk: list[int] = Field(default_factory=lambda: [10, 20, 50])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(False, description="bf16 autocast on CUDA; ignored on CPU")
    eval_batch_users: int = Field(4096, ge=1)
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = CPU cores / local DDP ranks")
    out: str | None = None

    def batch_size_for(self, n_train: int) -> int:
        """Triples per step for a training set of n_train interactions (steps_per_epoch wins when set)."""
        if self.steps_per_epoch is None:
            return self.batch_size
        return max(1, math.ceil(n_train / self.steps_per_epoch))


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Validated preset of the backbone < YAML or TOML file (or nothing) < dotted overrides like
    {'backbone.name': 'bpr'}. The preset is chosen by the backbone and `mrdib.enabled` that the file and the
    overrides end up with; `validated_defaults: false` (in either) leaves it out. A batch size set in the file
    or the overrides replaces the preset's steps_per_epoch (the user's explicit choice of step size wins).
    Two sets of presets, each validated on its own kind of data: an MMRec folder with more than
    presets.SPARSE_LIMIT training interactions per user gets the dense ones, anything else the sparse ones."""
    from training.presets import preset_for

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    set_dotted(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    if data.get("validated_defaults", True):
        backbone = (data.get("backbone") or {}).get("name", BackboneConfig.model_fields["name"].default)
        enabled = bool((data.get("mrdib") or {}).get("enabled", False))
        chosen = preset_for(str(backbone), enabled, data.get("data"))
        if "batch_size" in data:
            chosen.pop("steps_per_epoch", None)
        data = merge(set_dotted({}, chosen), data)
    return TrainConfig.model_validate(data)


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for nested mappings (a new dict; neither argument changes)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply {'backbone.params.knn_k': 5, ...} to a nested config dict in place (missing levels are created)."""
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
