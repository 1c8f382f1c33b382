"""Build a baseline by name, fit it, evaluate it, and pick hyper-parameters on VALIDATION.

Model selection never looks at test: every grid candidate is scored on the validation
split only, the best (first on ties) is kept, and test is evaluated once, for the winner.
The grids are declared here, next to the models, as MMRec declares them in YAML.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from training.baselines.base import Baseline
from training.baselines.bpr import BPRMF, BPRConfig
from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.baselines.pop import MostPopular
from training.data.dataset import TEST, VALID, InteractionDataset
from training.evaluation import DEFAULT_KS, evaluate

MODELS = ("pop", "itemknn", "bpr")

# Validation grids (small on purpose: the baselines are references, not contenders).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "pop": [{}],
    "itemknn": [
        {"k": k, "modalities": mods, "combine": comb}
        for k in (5, 10, 20, 50, 100)
        for mods, comb in ((["text"], "concat"), (["meta"], "concat"), (None, "concat"), (None, "mean"))
    ],
    "bpr": [{"reg": reg} for reg in (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)],
}


class CandidateResult(BaseModel):
    """One grid point: its parameters and its VALIDATION metrics."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any]
    valid: dict[str, float | int]
    fit_seconds: float
    best_epoch: int | None = None


class SelectionResult(BaseModel):
    """The winner's parameters and its valid/test metrics, plus every candidate's valid metrics."""

    model_config = ConfigDict(extra="forbid")

    model: str
    params: dict[str, Any]
    selection_metric: str
    candidates: list[CandidateResult]
    valid: dict[str, float | int]
    test: dict[str, float | int]
    best_epoch: int | None = None
    fit_seconds: float


def make_baseline(model: str, params: dict[str, Any] | None = None, seed: int = 2024, device: str = "cpu") -> Baseline:
    """Instantiate a baseline by name; ``params`` are validated by the model's pydantic config."""
    params = dict(params or {})
    if model == "pop":
        if params:
            raise ValueError(f"most-popular takes no parameters, got {sorted(params)}")
        return MostPopular(device=device)
    if model == "itemknn":
        return ItemKNN(ItemKNNConfig(**params), device=device)
    if model == "bpr":
        return BPRMF(BPRConfig(**{"seed": seed, **params}), device=device)
    raise ValueError(f"unknown baseline {model!r}; choose one of {MODELS}")


def select_on_validation(
    model: str,
    dataset: InteractionDataset,
    grid: Sequence[dict[str, Any]] | None = None,
    base_params: dict[str, Any] | None = None,
    seed: int = 2024,
    device: str = "cpu",
    metric: str = "recall@20",
    ks: Sequence[int] = DEFAULT_KS,
    mask_valid_at_test: bool = False,
) -> SelectionResult:
    """Fit every grid point (``base_params`` updated by the point), keep the best on VALIDATION.

    With ``grid=None`` the single configuration ``base_params`` is fitted (no selection).
    Test is evaluated only for the selected configuration.
    """
    torch.manual_seed(seed)
    points = list(grid) if grid is not None else [{}]
    ks = tuple(sorted({*ks, int(metric.split("@")[1])})) if "@" in metric else tuple(ks)
    best: tuple[float, Baseline, CandidateResult] | None = None
    candidates: list[CandidateResult] = []
    for point in points:
        params = {**(base_params or {}), **point}
        t0 = time.perf_counter()
        m = make_baseline(model, params, seed, device).fit(dataset)
        fit_s = time.perf_counter() - t0
        valid = evaluate(m.score, dataset, VALID, ks)
        if metric not in valid:
            raise ValueError(f"selection metric {metric!r} is not one of {sorted(valid)}")
        cand = CandidateResult(params=params, valid=valid, fit_seconds=fit_s, best_epoch=getattr(m, "best_epoch", None))
        candidates.append(cand)
        if best is None or valid[metric] > best[0]:
            best = (valid[metric], m, cand)
    assert best is not None
    _, winner, cand = best
    test = evaluate(winner.score, dataset, TEST, ks, mask_valid_at_test=mask_valid_at_test)
    return SelectionResult(
        model=model,
        params=cand.params,
        selection_metric=metric,
        candidates=candidates,
        valid=cand.valid,
        test=test,
        best_epoch=cand.best_epoch,
        fit_seconds=sum(c.fit_seconds for c in candidates),
    )
