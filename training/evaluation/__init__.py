"""Standard evaluation protocol (MMRec's full ranking) shared by every model and baseline."""

from training.evaluation.evaluator import (
    DEFAULT_KS,
    ScoreFn,
    evaluate,
    evaluate_scores,
    evaluate_splits,
    hits_from_topk,
    mask_and_target,
    metrics_from_topk,
    popularity_percentile,
    run_evaluation,
)
from training.evaluation.metrics import METRIC_NAMES, per_user_metrics, validate_ks

__all__ = [
    "DEFAULT_KS",
    "METRIC_NAMES",
    "ScoreFn",
    "evaluate",
    "evaluate_scores",
    "evaluate_splits",
    "hits_from_topk",
    "mask_and_target",
    "metrics_from_topk",
    "per_user_metrics",
    "popularity_percentile",
    "run_evaluation",
    "validate_ks",
]
