"""The batched evaluator: golden numbers from MMRec, protocol details, batching invariance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests._eval_helpers import make_dataset, random_dataset, shared_data
from training.data.dataset import TEST, TRAIN, VALID
from training.evaluation import evaluate, evaluate_scores, popularity_percentile

# --- golden: MMRec's own metric functions on fixed scores ------------------------------------------------


def _golden_inputs() -> tuple[np.ndarray, dict, dict[int, sp.csr_matrix]]:
    root = shared_data()
    if root is None or not (root / "eval-golden" / "scores.npy").is_file():
        pytest.skip("shared data (eval-golden, ml-100k-mm) not available")
    scores = np.load(root / "eval-golden" / "scores.npy", allow_pickle=False)
    expected = json.loads((root / "eval-golden" / "expected.json").read_text())
    n_users, n_items = scores.shape
    # The .inter file is read directly (not through the loader) so the golden test checks only the evaluator.
    table = np.loadtxt(root / "ml-100k-mm" / "ml100k.inter", delimiter="\t", skiprows=1, dtype=np.float64)
    u, i, label = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 4].astype(np.int64)
    mats = {}
    for split in (TRAIN, VALID, TEST):
        keep = (u < n_users) & (label == split)
        mats[split] = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (u[keep], i[keep])), shape=(n_users, n_items)
        )
    return scores, expected, mats


def test_golden_reproduces_every_mmrec_number() -> None:
    scores, expected, mats = _golden_inputs()
    assert (expected["users"], expected["items"]) == scores.shape
    for name, split in (("valid", VALID), ("test", TEST)):
        want = expected["expected"][name]
        ks = sorted({int(key.split("@")[1]) for key in want})
        got = evaluate_scores(scores, mats[TRAIN], mats[split], ks=ks, batch_users=64)
        assert got["n_users"] == scores.shape[0]
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-6, f"{name} {key}: got {got[key]!r}, MMRec gives {value!r}"


# --- protocol on a hand-computed example -----------------------------------------------------------------


@pytest.fixture()
def hand_dataset():
    # user 0: train {0}, valid {1}, test {2}; user 1: train {3} only (skipped); user 2: train {1,2}, valid {4}, test {0}
    triples = [(0, 0, TRAIN), (0, 1, VALID), (0, 2, TEST), (1, 3, TRAIN), (2, 1, TRAIN), (2, 2, TRAIN)]
    triples += [(2, 4, VALID), (2, 0, TEST)]
    return make_dataset(triples, n_users=3, n_items=5)


def _fixed_scores(seen: list[list[int]] | None = None):
    order = torch.tensor([3.0, 5.0, 4.0, 1.0, 2.0])  # ranking without masks: 1, 2, 0, 4, 3

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        if seen is not None:
            seen.append(users.tolist())
        return order.repeat(len(users), 1)

    return score_fn


def test_hand_example_valid(hand_dataset) -> None:
    seen: list[list[int]] = []
    r = evaluate(_fixed_scores(seen), hand_dataset, VALID, ks=(1, 2))
    assert seen == [[0, 2]]  # user 1 has no valid item: skipped, never scored
    assert r["n_users"] == 2
    # user 0 (mask {0}): ranking 1,2,4,3 -> hit at rank 1; user 2 (mask {1,2}): ranking 0,4,3 -> hit at rank 2.
    assert r["recall@1"] == pytest.approx(0.5)
    assert r["recall@2"] == pytest.approx(1.0)
    assert r["precision@2"] == pytest.approx(0.5)
    assert r["ndcg@2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert r["map@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["coverage@1"] == pytest.approx(2 / 5)  # top-1 items {1, 0}
    assert r["coverage@2"] == pytest.approx(4 / 5)  # top-2 items {1, 2, 0, 4}
    # train counts 1,1,1,1,0: item 4 has percentile 0, the tied others (3.5 - 1) / 4 = 0.625
    assert r["popularity@1"] == pytest.approx(0.625)
    assert r["popularity@2"] == pytest.approx((0.625 + (0.625 + 0.0) / 2) / 2)


def test_valid_items_stay_candidates_at_test_unless_asked(hand_dataset) -> None:
    r = evaluate(_fixed_scores(), hand_dataset, TEST, ks=(1, 2))
    # user 0: valid item 1 is NOT masked and takes rank 1, test item 2 is at rank 2; user 2: item 0 at rank 1.
    assert r["recall@1"] == pytest.approx(0.5)
    assert r["recall@2"] == pytest.approx(1.0)
    r = evaluate(_fixed_scores(), hand_dataset, TEST, ks=(1, 2), mask_valid_at_test=True)
    assert r["recall@1"] == pytest.approx(1.0)  # item 1 masked for user 0, so test item 2 moves to rank 1


def test_rejects_bad_calls(hand_dataset) -> None:
    with pytest.raises(ValueError, match="valid"):
        evaluate(_fixed_scores(), hand_dataset, TRAIN)
    with pytest.raises(ValueError, match="exceeds the number of items"):
        evaluate(_fixed_scores(), hand_dataset, VALID, ks=(10,))
    with pytest.raises(ValueError, match="score_fn returned shape"):
        evaluate(lambda u: torch.zeros(len(u), 4), hand_dataset, VALID, ks=(1,))


def test_does_not_modify_the_callers_scores() -> None:
    ds = random_dataset(20, 30, 8, seed=1)
    scores = torch.rand(20, 30)
    before = scores.clone()
    evaluate_scores(scores, ds.csr(TRAIN), ds.csr(TEST), ks=(5,))
    evaluate(lambda u: scores[int(u[0]) : int(u[0]) + 1], ds, TEST, ks=(5,), batch_users=1)  # a view
    assert torch.equal(scores, before)


# --- batching invariance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [VALID, TEST])
def test_batching_gives_identical_results(split: int) -> None:
    ds = random_dataset(60, 50, 10, seed=3)
    gen = torch.Generator().manual_seed(0)
    scores = torch.round(torch.rand(60, 50, generator=gen) * 10) / 10  # coarse values: many ties
    results = [evaluate(lambda u: scores[u], ds, split, ks=(1, 5, 10, 20), batch_users=b) for b in (1, 7, ds.n_users)]
    results.append(evaluate(lambda u: scores[u], ds, split, ks=(1, 5, 10, 20), max_block_scores=3 * 50))
    results.append(evaluate_scores(scores.numpy(), ds.csr(TRAIN), ds.csr(split), ks=(1, 5, 10, 20), batch_users=11))
    for r in results[1:]:
        assert r == results[0]
    assert results[0]["n_users"] == len(np.unique(ds.split_pairs(split)[0]))


def test_popularity_percentile_ranks_and_ties() -> None:
    np.testing.assert_allclose(popularity_percentile(np.array([5, 0, 5, 9])), [0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(popularity_percentile(np.array([7])), [0.5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu() -> None:
    ds = random_dataset(40, 30, 8, seed=5)
    scores = torch.rand(40, 30)
    cpu = evaluate(lambda u: scores[u], ds, TEST, ks=(5, 10))
    gpu_scores = scores.cuda()
    gpu = evaluate(lambda u: gpu_scores[u.cuda()], ds, TEST, ks=(5, 10))
    assert gpu == pytest.approx(cpu, abs=1e-12)


def test_blocks_bound_the_score_memory() -> None:
    # Each block holds at most max_block_scores scores, whatever batch_users says.
    ds = random_dataset(40, 30, 8, seed=2)
    sizes: list[int] = []

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        sizes.append(len(users))
        return torch.rand(len(users), 30)

    r = evaluate(score_fn, ds, VALID, ks=(5,), batch_users=4096, max_block_scores=100)
    assert max(sizes) == 3 and sum(sizes) == r["n_users"]


def test_split_without_users_gives_zeros() -> None:
    ds = make_dataset([(0, 0, TRAIN), (0, 1, VALID)], n_users=1, n_items=3)
    r = evaluate(lambda u: torch.zeros(len(u), 3), ds, TEST, ks=(1,))
    assert r["n_users"] == 0 and r["recall@1"] == 0.0 and r["coverage@1"] == 0.0
