"""The training loop: reproducibility, exact resume, early stopping, best-epoch bookkeeping, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import make_tiny, read_metrics, tiny_config

from training import checkpoint as ckpt
from training.data.mmrec import load_mmrec
from training.models.base import ModelContext
from training.models.recommender import build_recommender
from training.trainer import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_mmrec(make_tiny(tmp_path_factory.mktemp("data") / "tiny"))


def _embeddings(out: Path) -> dict[str, np.ndarray]:
    e = ckpt.load_embeddings(out)
    return {"user": e.user, "item": e.item, **{f"c.{k}": v for k, v in e.components.items()}}


def test_same_seed_gives_identical_results_on_cpu(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(**{"backbone.name": "freedom", "mrdib.enabled": True, "epochs": 2})
    a = train(cfg, tiny, tmp_path / "a", progress=False, curves=False)
    b = train(cfg, tiny, tmp_path / "b", progress=False, curves=False)
    assert a.valid == b.valid and a.test == b.test and a.best_epoch == b.best_epoch
    ea, eb = _embeddings(tmp_path / "a"), _embeddings(tmp_path / "b")
    assert ea.keys() == eb.keys() and len(ea) > 3  # MRdIB components exported
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k])
    train(cfg.model_copy(update={"seed": cfg.seed + 1}), tiny, tmp_path / "c", progress=False, curves=False)
    assert not np.array_equal(_embeddings(tmp_path / "c")["user"], ea["user"])


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny, tmp_path: Path) -> None:
    # LightGCN + MRdIB with CLUB: two optimisers, per-epoch RNG, early-stopping state all restored.
    cfg = tiny_config(**{"backbone.name": "lightgcn", "mrdib.enabled": True, "epochs": 4})
    full = train(cfg, tiny, tmp_path / "full", progress=False, curves=False)
    train(cfg.model_copy(update={"epochs": 2}), tiny, tmp_path / "part", progress=False, curves=False)
    assert (tmp_path / "part" / "resume" / "optimizer.safetensors").is_file()
    resumed = train(cfg, tiny, tmp_path / "part", resume=True, progress=False, curves=False)
    assert resumed.epochs_run == full.epochs_run == 4
    assert resumed.valid == full.valid and resumed.test == full.test and resumed.best_epoch == full.best_epoch
    ef, er = _embeddings(tmp_path / "full"), _embeddings(tmp_path / "part")
    for k in ef:
        np.testing.assert_array_equal(ef[k], er[k])
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]
    losses = lambda p: [json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(tiny, tmp_path: Path) -> None:
    # lr ~ 0: the validation metric cannot improve after the first epoch.
    cfg = tiny_config(**{"backbone.name": "bpr", "epochs": 50, "patience": 2, "lr": 1e-12})
    r = train(cfg, tiny, tmp_path, progress=False, curves=False)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 0
    m = read_metrics(tmp_path)
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 0


def test_metrics_are_the_best_validation_epochs(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(**{"backbone.name": "vbpr", "mrdib.enabled": True, "epochs": 5, "lr": 0.05})
    r = train(cfg, tiny, tmp_path, progress=False, curves=False)
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [h["valid"]["recall@20"] for h in history]
    assert r.best_epoch == int(np.argmax(vals))  # first maximum wins (strict improvement)
    m = read_metrics(tmp_path)
    assert m["valid"]["recall@20"] == pytest.approx(vals[r.best_epoch], abs=1e-12)
    assert {"recall@10", "recall@20", "ndcg@10", "ndcg@20"} <= m["test"].keys()
    for h in history:
        assert {"loss", "bpr"} <= h["loss"].keys() and h["seconds"] > 0
    # model.safetensors is the best state: loading it reproduces the exported embeddings.
    ctx = ModelContext.from_dataset(tiny)
    torch.manual_seed(0)
    model = build_recommender(cfg, ctx)
    ckpt.load_state_dict(tmp_path / "model.safetensors", model)
    model.eval()
    with torch.no_grad():
        u, i = model.embeddings()
    e = ckpt.load_embeddings(tmp_path)
    np.testing.assert_allclose(u.detach().numpy(), e.user, atol=1e-6)
    np.testing.assert_allclose(i.detach().numpy(), e.item, atol=1e-5)


def test_optimizer_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    ckpt.save_optimizers(tmp_path / "o.safetensors", {"main": opt})
    fresh = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.5)
    ckpt.load_optimizers(tmp_path / "o.safetensors", {"main": fresh})
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx in a["state"]:
        for key, v in a["state"][idx].items():
            torch.testing.assert_close(v, b["state"][idx][key])
    with pytest.raises(ValueError, match="no state for optimiser 'aux'"):
        ckpt.load_optimizers(tmp_path / "o.safetensors", {"aux": fresh})


def test_bad_valid_metric_is_rejected_before_training(tiny, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid_metric"):
        train(tiny_config(valid_metric="recall@30"), tiny, tmp_path, progress=False, curves=False)
