"""Synthetic generator: the planted factors are where the docs say (linear probes), and the catalogue
has the requested shape, power-law popularity and preference-driven interactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from training.data.dataset import InteractionDataset
from training.data.mmrec import load_mmrec
from training.data.synth import SynthConfig, generate_synthetic, load_factors


def heldout_r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 on the second half of a least-squares probe (with intercept) fit on the first half.

    Held out, because an in-sample fit with d features on n items has R^2 ~ d/n even for pure noise.
    """
    x = np.c_[x, np.ones(len(x))]
    h = len(y) // 2
    w = np.linalg.lstsq(x[:h], y[:h], rcond=None)[0]
    err = y[h:] - x[h:] @ w
    return float(1.0 - err.var() / y[h:].var())


def whitened(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal components (unit variance): the modality's latent subspace, up to a rotation."""
    x = x - x.mean(axis=0)
    u, _, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] * np.sqrt(len(x))


def product_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise products of two modalities' components: a fixed nonlinear feature map of the pair."""
    return (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthConfig, InteractionDataset, dict]:
    cfg = SynthConfig(n_users=40, n_items=2000, n_interactions=400, modalities=["image", "text", "audio"],
                      dims=[24, 20, 22], n_noise=2, n_synergy=3, seed=3)  # fmt: skip
    out = generate_synthetic(cfg, tmp_path_factory.mktemp("probe"))
    return cfg, load_mmrec(out), load_factors(out)


def test_factor_file_keys_and_shapes(probe_data: tuple[SynthConfig, InteractionDataset, dict]) -> None:
    cfg, _, f = probe_data
    assert f["redundant"].shape == (2000, cfg.n_redundant)
    assert f["synergy"].shape == (2000, 3)
    for m in cfg.modalities:
        assert f[f"unique_{m}"].shape == (2000, cfg.n_unique)
        assert f[f"noise_{m}"].shape == (2000, cfg.n_noise)
    assert f["synergy_pairs"].tolist() == [[0, 1], [1, 2], [2, 0]]
    assert f["modalities"].tolist() == cfg.modalities
    assert set(np.unique(f["synergy"])) == {-1.0, 1.0}
    assert f["user_pref_redundant"].shape == (40, cfg.n_redundant)
    assert f["popularity"].shape == (2000,)


def test_redundant_and_unique_factors_where_planted(probe_data: tuple[SynthConfig, InteractionDataset, dict]) -> None:
    cfg, ds, f = probe_data
    for m in cfg.modalities:
        x = ds.features[m]
        for k in range(cfg.n_redundant):
            assert heldout_r2(x, f["redundant"][:, k]) > 0.9, (m, k)
        for other in cfg.modalities:
            r2 = heldout_r2(x, f[f"unique_{other}"][:, 0])
            assert (r2 > 0.9) if other == m else (r2 < 0.1), (m, other, r2)


def test_synergy_needs_both_modalities_of_its_pair(probe_data: tuple[SynthConfig, InteractionDataset, dict]) -> None:
    cfg, ds, f = probe_data
    comps = {m: whitened(ds.features[m], cfg.latent_size(m)) for m in cfg.modalities}
    for k, (a, b) in enumerate(f["synergy_pairs"].tolist()):
        y = f["synergy"][:, k]
        ma, mb = cfg.modalities[a], cfg.modalities[b]
        for m in cfg.modalities:  # no single modality predicts it linearly (nor jointly-linearly)
            assert heldout_r2(ds.features[m], y) < 0.1, (k, m)
        assert heldout_r2(np.c_[ds.features[ma], ds.features[mb]], y) < 0.1
        assert heldout_r2(product_features(comps[ma], comps[mb]), y) > 0.9, k
        # ... but the product of a modality with itself does not recover it: the pair is needed.
        assert heldout_r2(product_features(comps[ma], comps[ma]), y) < 0.2, k


def test_default_shape_counts_and_determinism(tmp_path: Path) -> None:
    cfg = SynthConfig()
    a = generate_synthetic(cfg, tmp_path / "a")
    b = generate_synthetic(cfg, tmp_path / "b")
    for name in ("synth.inter", "image_feat.npy", "text_feat.npy", "factors.npz", "item_meta.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ds = load_mmrec(a)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (600, 400, 25_000)
    assert ds.feature_dims == {"image": 64, "text": 48}
    per_user = np.bincount(ds.users, minlength=ds.n_users)
    assert per_user.min() >= cfg.min_interactions_per_user
    assert ds.warnings == []  # no duplicates, every user has training rows
    other = load_mmrec(generate_synthetic(cfg.model_copy(update={"seed": 1}), tmp_path / "c"))
    assert other.fingerprint() != ds.fingerprint()


def test_items_have_readable_names_that_follow_the_taste_factors(tmp_path: Path) -> None:
    cfg = SynthConfig()
    ds = load_mmrec(generate_synthetic(cfg, tmp_path / "s"))
    assert ds.item_meta is not None and len(ds.item_meta) == ds.n_items
    titles = [m["title"] for m in ds.item_meta]
    assert all(len(t.split()) == 3 and t.istitle() for t in titles)
    assert len(set(titles)) > 0.9 * ds.n_items  # mostly distinct names
    category = np.array([m["category"] for m in ds.item_meta])
    assert set(category) == {"Home", "Outdoors", "Toys", "Books"}  # one per redundant factor (4)
    strongest = load_factors(tmp_path / "s")["redundant"].argmax(axis=1)
    assert (category == np.array(["Home", "Outdoors", "Toys", "Books"])[strongest]).all()
    # Without redundant factors there is no taste to name: every item falls in the first category.
    bare = SynthConfig(n_redundant=0)
    assert {m["category"] for m in load_mmrec(generate_synthetic(bare, tmp_path / "b")).item_meta} == {"Home"}


def test_popularity_is_long_tailed(tmp_path: Path) -> None:
    ds = load_mmrec(generate_synthetic(SynthConfig(popularity_weight=1.0), tmp_path / "s"))
    pop = np.sort(np.bincount(ds.items, minlength=ds.n_items))[::-1]
    top_share = pop[: ds.n_items // 10].sum() / pop.sum()
    assert top_share > 0.2  # uniform would be 0.1


def _chosen_minus_mean(ds: InteractionDataset, f: dict, block: str) -> float:
    """Mean preference score of the chosen items minus that of all items (per user, averaged)."""
    score = f[f"user_pref_{block}"] @ f[block].T
    chosen = score[ds.users, ds.items].mean()
    return float(chosen - score.mean())


def test_interactions_follow_planted_preferences(tmp_path: Path) -> None:
    small = dict(n_users=200, n_items=300, n_interactions=4000)
    plain = generate_synthetic(SynthConfig(**small, synergy_strength=0.0), tmp_path / "plain")
    heavy = generate_synthetic(SynthConfig.preset("synergy-heavy", **small), tmp_path / "heavy")
    ds_p, f_p = load_mmrec(plain), load_factors(plain)
    ds_h, f_h = load_mmrec(heavy), load_factors(heavy)
    assert _chosen_minus_mean(ds_p, f_p, "redundant") > 0.5
    assert abs(_chosen_minus_mean(ds_p, f_p, "synergy")) < 0.1  # synergy_strength 0: ignored
    assert _chosen_minus_mean(ds_h, f_h, "synergy") > 1.0


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="latent factors"):
        SynthConfig(dims=[4, 4])
    with pytest.raises(ValidationError, match="dims has 1 entries"):
        SynthConfig(dims=[64])
    with pytest.raises(ValidationError, match="at least two modalities"):
        SynthConfig(modalities=["image"], dims=[64])
    with pytest.raises(ValidationError, match="min_interactions_per_user"):
        SynthConfig(n_interactions=100)
    with pytest.raises(ValidationError, match="unique"):
        SynthConfig(modalities=["a", "a"])
    with pytest.raises(ValueError, match="unknown preset"):
        SynthConfig.preset("huge")  # type: ignore[arg-type]
    single = SynthConfig(modalities=["text"], dims=[16], n_synergy=0)
    assert single.dims == [16]


def test_baby_preset_shape() -> None:
    cfg = SynthConfig.preset("baby")
    assert (cfg.n_users, cfg.n_items, cfg.n_interactions) == (19_445, 7_050, 160_792)
    assert dict(zip(cfg.modalities, cfg.dims or [], strict=True)) == {"image": 4096, "text": 384}
    assert SynthConfig.preset("baby", seed=5).seed == 5
