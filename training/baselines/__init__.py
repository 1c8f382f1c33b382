"""Reference baselines (most-popular, content ItemKNN, BPR-MF) measured with the standard evaluator."""

from training.baselines.base import Baseline
from training.baselines.bpr import BPRMF, BPRConfig, NegativeSampler
from training.baselines.itemknn import ItemKNN, ItemKNNConfig, knn_graph
from training.baselines.pop import MostPopular
from training.baselines.select import (
    GRIDS,
    MODELS,
    CandidateResult,
    SelectionResult,
    make_baseline,
    select_on_validation,
)

__all__ = [
    "BPRMF",
    "GRIDS",
    "MODELS",
    "BPRConfig",
    "Baseline",
    "CandidateResult",
    "ItemKNN",
    "ItemKNNConfig",
    "MostPopular",
    "NegativeSampler",
    "SelectionResult",
    "knn_graph",
    "make_baseline",
    "select_on_validation",
]
