"""Metric formulas: hand-computed cases and a property test against brute-force Python."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._eval_helpers import brute_force_metrics
from training.evaluation import per_user_metrics, validate_ks


def _metrics(hit_rows: list[list[int]], pos_len: list[int], ks: tuple[int, ...]) -> dict[str, list[float]]:
    out = per_user_metrics(torch.tensor(hit_rows, dtype=torch.bool), torch.tensor(pos_len), ks)
    return {k: v.tolist() for k, v in out.items()}


def test_hand_case_two_of_three_targets() -> None:
    # Ranking: a, x, b, y, z with targets {a, b, c}: hits at ranks 1 and 3, |test_u| = 3.
    m = _metrics([[1, 0, 1, 0, 0]], [3], (2, 5))
    # K = 5
    assert m["recall@5"][0] == pytest.approx(2 / 3)
    assert m["precision@5"][0] == pytest.approx(2 / 5)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)  # 1 + 0.5
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # min(3, 5) = 3 ideal positions
    assert m["ndcg@5"][0] == pytest.approx(dcg / idcg)
    assert m["ndcg@5"][0] == pytest.approx(1.5 / 2.1309297535714578)
    # MAP: precision at the hit ranks is 1/1 and 2/3; normaliser min(3, 5) = 3.
    assert m["map@5"][0] == pytest.approx((1 + 2 / 3) / 3)
    # K = 2: one hit (rank 1).
    assert m["recall@2"][0] == pytest.approx(1 / 3)
    assert m["precision@2"][0] == pytest.approx(1 / 2)
    assert m["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["map@2"][0] == pytest.approx(1 / 2)  # normaliser min(3, 2) = 2


def test_hand_case_single_target_and_miss() -> None:
    # User 0: one target, found at rank 2. User 1: two targets, none in the list.
    m = _metrics([[0, 1, 0], [0, 0, 0]], [1, 2], (3,))
    assert m["recall@3"] == pytest.approx([1.0, 0.0])
    assert m["precision@3"] == pytest.approx([1 / 3, 0.0])
    assert m["ndcg@3"] == pytest.approx([1 / math.log2(3), 0.0])
    assert m["map@3"] == pytest.approx([0.5, 0.0])


def test_hand_case_perfect_ranking_scores_one() -> None:
    # More targets (4) than K (3) and every listed item a hit: NDCG and MAP are 1, recall 3/4.
    m = _metrics([[1, 1, 1]], [4], (3,))
    assert m["ndcg@3"][0] == pytest.approx(1.0)
    assert m["map@3"][0] == pytest.approx(1.0)
    assert m["recall@3"][0] == pytest.approx(0.75)
    assert m["precision@3"][0] == pytest.approx(1.0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        per_user_metrics(torch.zeros(1, 3, dtype=torch.bool), torch.tensor([1]), (5,))
    with pytest.raises(ValueError, match="at least one target"):
        per_user_metrics(torch.zeros(1, 3, dtype=torch.bool), torch.tensor([0]), (2,))
    with pytest.raises(ValueError, match=">= 1"):
        validate_ks([0, 5])
    assert validate_ks([20, 10, 20]) == (10, 20)


@st.composite
def ranking_case(draw: st.DrawFn) -> tuple[list[int], set[int], list[int]]:
    n_items = draw(st.integers(min_value=1, max_value=30))
    ranking = draw(st.permutations(list(range(n_items))))
    k_max = draw(st.integers(min_value=1, max_value=n_items))
    targets = draw(st.sets(st.integers(min_value=0, max_value=n_items + 5), min_size=1, max_size=n_items + 3))
    ks = draw(st.lists(st.integers(min_value=1, max_value=k_max), min_size=1, max_size=4))
    return list(ranking[:k_max]), targets, ks


@settings(max_examples=100, deadline=None)
@given(cases=st.lists(ranking_case(), min_size=1, max_size=4))
def test_vectorised_metrics_match_brute_force(cases: list[tuple[list[int], set[int], list[int]]]) -> None:
    # Several users in one batch: pad every ranking to the same length with guaranteed misses.
    k_common = min(len(r) for r, _, _ in cases)
    ks = sorted({k for _, _, user_ks in cases for k in user_ks if k <= k_common} or {1})
    hits = [[1 if item in t else 0 for item in r[:k_common]] for r, t, _ in cases]
    got = per_user_metrics(torch.tensor(hits, dtype=torch.bool), torch.tensor([len(t) for _, t, _ in cases]), ks)
    for u, (r, t, _) in enumerate(cases):
        for k in ks:
            want = brute_force_metrics(r, t, k)
            for name, value in want.items():
                assert got[f"{name}@{k}"][u].item() == pytest.approx(value, abs=1e-12), (name, k, r, t)
