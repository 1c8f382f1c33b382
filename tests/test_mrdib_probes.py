"""Linear probes of planted factors: the R^2 machinery on known answers, and on a trained MRdIB model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests._mrdib_helpers import SMALL, train
from training.config import BackboneConfig, MRdIBConfig, TrainConfig
from training.data.load import load_dataset
from training.data.synth import SynthConfig, generate_synthetic
from training.models.base import ModelContext
from training.models.recommender import build_recommender
from training.probes import component_representations, load_factors, probe_r2


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    cfg = SynthConfig(
        name="probe", seed=3, n_users=120, n_items=300, n_interactions=3000, dims=[24, 20], feature_noise=0.05
    )
    return generate_synthetic(cfg, tmp_path_factory.mktemp("synth"))


def test_probe_r2_on_known_answers() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 3))
    g = rng.normal(size=(400, 2))
    xor = np.sign(rng.normal(size=400)) * np.sign(rng.normal(size=400))
    reps = {"linear_in_f": f @ rng.normal(size=(3, 5)), "noise": rng.normal(size=(400, 6))}
    table = probe_r2(reps, {"f": f, "g": g, "xor": xor})
    assert table.get("f", "linear_in_f") > 0.99
    assert table.get("g", "linear_in_f") < 0.05
    assert table.get("f", "noise") < 0.05
    assert table.r2.shape == (3, 2) and table.n_train + table.n_test == 400
    assert "linear_in_f" in table.format() and table.to_dict()["f"]["noise"] == table.get("f", "noise")
    with pytest.raises(ValueError, match="disagree on the number of items"):
        probe_r2({"a": f[:10]}, {"f": f})


def test_explicit_holdout_exposes_memorisation() -> None:
    """A representation that holds a factor only for the items it was 'trained' on looks perfect on a random
    split of those items and worthless on items it never saw: the point of testing probes on cold items."""
    rng = np.random.default_rng(1)
    f = rng.normal(size=(500, 2))
    cold = np.arange(400, 500)
    memorised = rng.normal(size=(500, 4))
    memorised[:400, :2] = f[:400]  # known on the first 400 items only
    warm_only = {k: v[:400] for k, v in {"m": memorised}.items()}
    assert probe_r2(warm_only, {"f": f[:400]}).get("f", "m") > 0.99
    table = probe_r2({"m": memorised}, {"f": f}, test_items=cold)
    assert table.n_test == 100 and table.n_train == 400 and table.get("f", "m") < 0.1
    with pytest.raises(ValueError, match="need >= 2 each"):
        probe_r2({"m": memorised}, {"f": f}, test_items=np.arange(499))


def test_load_factors_validates_rows(synth: Path, tmp_path: Path) -> None:
    factors = load_factors(synth, n_items=300)
    assert {"redundant", "unique_image", "unique_text", "synergy"} <= set(factors)
    assert "modalities" not in factors and "synergy_pairs" not in factors
    with pytest.raises(ValueError, match=r"factors\.npz: factor 'redundant' has 300 rows, the catalogue has 10"):
        load_factors(synth / "factors.npz", n_items=10)
    bad = tmp_path / "factors.npz"
    np.savez(bad, names=np.asarray(["a", "b"]))
    with pytest.raises(ValueError, match="not numeric"):
        load_factors(bad)
    with pytest.raises(FileNotFoundError):
        load_factors(tmp_path / "missing")


def test_probes_on_planted_catalogue_and_trained_model(synth: Path) -> None:
    ds = load_dataset(synth)
    factors = load_factors(synth, n_items=ds.n_items)
    ctx = ModelContext.from_dataset(ds)
    torch.manual_seed(0)
    cfg = TrainConfig(backbone=BackboneConfig(name="bpr", embedding_dim=16), mrdib=MRdIBConfig(**SMALL))
    model = build_recommender(cfg, ctx)
    train(model, ctx, steps=20, lr=0.003, n=256)
    reps = component_representations(model)
    assert {"shared", "unique:image", "unique:text", "synergy", "z:image", "features:text", "collaborative"} <= set(
        reps
    )
    assert all(v.shape[0] == ds.n_items for v in reps.values())
    table = probe_r2(reps, factors)
    assert np.isfinite(table.r2).all()
    # ground truth of the generator: unique factors are linear in their own modality's features only,
    # and the XOR-like synergy factor is linearly decodable from neither modality alone
    assert table.get("unique_image", "features:image") > 0.9
    assert table.get("unique_image", "features:text") < 0.2
    assert table.get("redundant", "features:text") > 0.9
    assert table.get("synergy", "features:image") < 0.2 and table.get("synergy", "features:text") < 0.2
    # the plug-in's codes are deterministic functions of the features: probing them is reproducible
    again = probe_r2(component_representations(model), factors)
    np.testing.assert_allclose(again.r2, table.r2)


def test_load_run_rebuilds_the_trained_model_and_main_prints_markdown(tmp_path, capsys) -> None:
    """A checkpoint written by the trainer on synthetic data probes from the command line."""
    from training.config import MRdIBConfig, TrainConfig
    from training.experiment import resolve_dataset
    from training.probes import load_run, main
    from training.trainer import train

    cfg = TrainConfig(
        data="synth:small", epochs=1, threads=1, topk=[10, 20], batch_size=4096,
        mrdib=MRdIBConfig(enabled=True, hidden_dim=16, latent_dim=8, shared_dim=4, unique_dim=4, synergy_dim=4),
    )
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    train(cfg, resolve_dataset("synth:small", cache), run, progress=False, curves=False)
    model, folder = load_run(run, cache)
    assert folder is not None and (folder / "factors.npz").is_file()
    assert model.mrdib is not None and not model.training
    main([str(run), "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    head, table = out.split("\n", 1)
    assert head.startswith("probes fitted on ") and "(random)" in head
    assert table.startswith("| factor | ") and "| shared |" not in table.splitlines()[0][:9]
    assert "synergy" in out and "unique:" in out
