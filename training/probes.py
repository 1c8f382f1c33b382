"""Linear-probe diagnostics: is the planted information where MRdIB says it puts it?

On a synthetic catalogue (training/data/synth.py) every item has known planted factors (``redundant``,
``unique_<m>``, ``synergy``, ``noise_<m>``, ...). For each factor F and each learned per-item component C
(``shared``, ``unique:<m>``, ``synergy``, ``z:<m>``, and optionally the raw features ``features:<m>``) we fit
a ridge regression C -> F on a random part of the items and report R^2 on the held-out items. A working
decomposition shows e.g. high R^2 of ``unique_image`` from ``unique:image`` but not from ``unique:text``, and
of the XOR-like ``synergy`` factor from ``synergy`` but from no single modality's features.

Why ridge on held-out items: probes must not memorise (the representation has more dimensions than some
catalogues have items per split), and a linear probe measures linearly *accessible* information, which is
what a dot-product recommender can use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.data.dataset import TRAIN, InteractionDataset
from training.models.recommender import Recommender

#: keys of factors.npz that describe the generator, not per-item factors
_META_KEYS = frozenset({"synergy_pairs", "modalities"})
#: per-user arrays (the generator's user preferences, for oracle checks) are not item factors
_USER_PREFIX = "user_"


@dataclass(frozen=True)
class ProbeTable:
    """R^2 (held-out items) of each planted factor (rows) from each representation (columns)."""

    factors: list[str]
    components: list[str]
    r2: np.ndarray  # float64 [len(factors), len(components)]
    n_train: int
    n_test: int

    def get(self, factor: str, component: str) -> float:
        return float(self.r2[self.factors.index(factor), self.components.index(component)])

    def to_dict(self) -> dict[str, dict[str, float]]:
        """{factor: {component: R^2}} for JSON reports."""
        return {f: {c: float(self.r2[i, j]) for j, c in enumerate(self.components)} for i, f in enumerate(self.factors)}

    def format(self) -> str:
        """Plain-text table, factors as rows."""
        width = max(len(f) for f in self.factors)
        cols = [max(len(c), 6) for c in self.components]
        head = " " * width + "  " + "  ".join(c.rjust(w) for c, w in zip(self.components, cols, strict=True))
        lines = [head]
        for i, f in enumerate(self.factors):
            vals = "  ".join(f"{self.r2[i, j]:.3f}".rjust(w) for j, w in enumerate(cols))
            lines.append(f"{f.ljust(width)}  {vals}")
        return "\n".join(lines)


def load_factors(path: Path | str, n_items: int | None = None) -> dict[str, np.ndarray]:
    """Per-item planted factors from a factors.npz (or the dataset folder holding it), as float64 [n_items, k].

    Generator metadata (synergy_pairs, modalities) and per-user arrays (user_*) are dropped. 1-D arrays become
    one column.
    Raises ValueError naming the file and key for a non-numeric array or a row count that is not n_items.
    """
    path = Path(path)
    file = path / "factors.npz" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no factors file (written by the synthetic generator)")
    out: dict[str, np.ndarray] = {}
    with np.load(file, allow_pickle=False) as z:
        for key in z.files:
            if key in _META_KEYS or key.startswith(_USER_PREFIX):
                continue
            arr = z[key]
            if not np.issubdtype(arr.dtype, np.number):
                raise ValueError(f"{file}: factor {key!r} is not numeric (dtype {arr.dtype})")
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise ValueError(f"{file}: factor {key!r} must be [n_items] or [n_items, k], got {arr.shape}")
            if n_items is not None and arr.shape[0] != n_items:
                raise ValueError(f"{file}: factor {key!r} has {arr.shape[0]} rows, the catalogue has {n_items} items")
            if arr.shape[1] == 0:
                continue
            out[key] = arr.astype(np.float64)
    return out


def component_representations(model: Recommender, include_features: bool = True) -> dict[str, np.ndarray]:
    """Per-item representations to probe: the plug-in's codes and (optionally) the raw features per modality.

    Keys: "z:<m>", "shared", "unique:<m>", "synergy" (when the plug-in has them), "collaborative" (the
    backbone's item vector), "features:<m>".
    """
    reps = {k: v.detach().cpu().double().numpy() for k, v in model.component_representations().items()}
    _, item = _collaborative(model)
    reps["collaborative"] = item
    if include_features and model.mrdib is not None:
        for m, x in model.mrdib.raw_features.items():
            reps[f"features:{m}"] = x.detach().cpu().double().numpy()
    return reps


@torch.no_grad()
def _collaborative(model: Recommender) -> tuple[np.ndarray, np.ndarray]:
    was = model.training
    model.eval()
    try:
        u, i = model.backbone.propagate()
    finally:
        model.train(was)
    return u.detach().cpu().double().numpy(), i.detach().cpu().double().numpy()


def _ridge_r2(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, alpha: float) -> float:
    """Held-out R^2 of ridge regression, pooled over the target's columns (1 - SSE / SST)."""
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd < 1e-12] = 1.0
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    y_mu = y_tr.mean(0)
    gram = a.T @ a + alpha * len(a) * np.eye(a.shape[1])
    w = np.linalg.solve(gram, a.T @ (y_tr - y_mu))
    pred = b @ w + y_mu
    sst = ((y_te - y_te.mean(0)) ** 2).sum()
    if sst <= 1e-12:
        return float("nan")  # constant target on the test items: R^2 undefined
    return float(1.0 - ((y_te - pred) ** 2).sum() / sst)


def probe_r2(
    representations: dict[str, np.ndarray],
    factors: dict[str, np.ndarray],
    test_fraction: float = 0.3,
    alpha: float = 1e-3,
    seed: int = 0,
    test_items: np.ndarray | None = None,
) -> ProbeTable:
    """R^2 table of ridge probes factor <- representation on a random item split.

    Parameters
    ----------
    representations: name -> [n_items, d] (e.g. from `component_representations`).
    factors: name -> [n_items] or [n_items, k] (e.g. from `load_factors`).
    test_fraction: share of items held out for R^2 (the same split for every cell).
    alpha: ridge strength per item (penalty alpha * n_train * |w|^2 on standardised inputs).
    seed: the item split's seed.
    test_items: explicit held-out item rows (e.g. `cold_items`: items the encoders never saw with a label);
        overrides test_fraction / seed. Why it matters: a content encoder trained on an item's interactions
        can MEMORISE a factor of that item through its (unique) features, and a random split of the same
        items then credits the encoder with structure it only memorised.
    """
    if not representations or not factors:
        raise ValueError("probe_r2 needs at least one representation and one factor")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = {v.shape[0] for v in representations.values()} | {v.shape[0] for v in factors.values()}
    if len(n) != 1:
        raise ValueError(f"representations and factors disagree on the number of items: {sorted(n)}")
    n_items = n.pop()
    if test_items is not None:
        held = np.zeros(n_items, dtype=bool)
        held[np.asarray(test_items, dtype=np.int64)] = True
        te, tr = np.flatnonzero(held), np.flatnonzero(~held)
        if len(te) < 2 or len(tr) < 2:
            raise ValueError(f"test_items leaves {len(tr)} items to fit and {len(te)} to test; need >= 2 each")
    else:
        n_test = max(1, round(test_fraction * n_items))
        if n_items - n_test < 2:
            raise ValueError(f"{n_items} items are too few to fit and test a probe")
        perm = np.random.default_rng(seed).permutation(n_items)
        te, tr = perm[:n_test], perm[n_test:]
    fnames, cnames = list(factors), list(representations)
    table = np.full((len(fnames), len(cnames)), np.nan)
    for j, c in enumerate(cnames):
        x = np.asarray(representations[c], dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        for i, f in enumerate(fnames):
            y = np.asarray(factors[f], dtype=np.float64)
            y = y[:, None] if y.ndim == 1 else y
            table[i, j] = _ridge_r2(x[tr], y[tr], x[te], y[te], alpha)
    return ProbeTable(fnames, cnames, table, n_train=len(tr), n_test=len(te))


def load_run(run_dir: Path | str, cache_dir: Path | str = "runs/cache") -> tuple[Recommender, Path | None]:
    """Rebuild a trained Recommender from a checkpoint directory (config.json + model.safetensors).

    Returns the model (eval mode, CPU) and the dataset folder when it holds a factors.npz (synthetic data).
    """
    model, folder, _ = _load_run(run_dir, cache_dir)
    return model, folder


def _load_run(run_dir: Path | str, cache_dir: Path | str) -> tuple[Recommender, Path | None, InteractionDataset]:
    """`load_run` plus the run's dataset (resolved once, for callers that need both)."""
    from training import checkpoint as ckpt
    from training.config import TrainConfig
    from training.experiment import SYNTH_PREFIX, resolve_dataset
    from training.models.base import ModelContext
    from training.models.recommender import build_recommender

    run_dir = Path(run_dir)
    cfg = TrainConfig.model_validate(ckpt.read_json(run_dir, ckpt.CONFIG))
    if cfg.data is None:
        raise ValueError(f"{run_dir / ckpt.CONFIG}: no 'data' recorded, cannot rebuild the model")
    dataset = resolve_dataset(cfg.data, cache_dir)
    model = build_recommender(cfg, ModelContext.from_dataset(dataset, "cpu"))
    ckpt.load_state_dict(run_dir / ckpt.MODEL, model, "cpu")
    model.eval()
    folder = None
    if cfg.data.startswith(SYNTH_PREFIX):
        folder = Path(cache_dir) / f"synth-{cfg.data[len(SYNTH_PREFIX):]}"
    elif (Path(cfg.data) / "factors.npz").is_file():
        folder = Path(cfg.data)
    return model, folder, dataset


def cold_items(dataset: InteractionDataset) -> np.ndarray:
    """Item rows without a TRAINING interaction: the encoders met them only as sampled negatives, never with a
    positive label, so a probe tested on them measures what generalises."""
    _, items = dataset.split_pairs(TRAIN)
    return np.setdiff1d(np.arange(dataset.n_items), items)


def to_markdown(table: ProbeTable) -> str:
    """Markdown table, factors as rows, R^2 with 2 decimals (negative = worse than predicting the mean)."""
    lines = ["| factor | " + " | ".join(table.components) + " |", "|---" * (len(table.components) + 1) + "|"]
    for i, f in enumerate(table.factors):
        lines.append(f"| {f} | " + " | ".join(f"{table.r2[i, j]:.2f}" for j in range(len(table.components))) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m training.probes RUN_DIR [--cache-dir DIR]`: print the probe table of a synthetic-data run."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--holdout", choices=["random", "cold"], default="random",
                        help="test the probes on a random 30%% of the items, or on the items without training "
                             "interactions (fit on the others)")
    args = parser.parse_args(argv)
    model, folder, dataset = _load_run(args.run_dir, args.cache_dir)
    if folder is None:
        raise SystemExit(f"{args.run_dir}: its dataset has no factors.npz (probes need a synthetic catalogue)")
    factors = load_factors(folder, model.n_items)
    held = cold_items(dataset) if args.holdout == "cold" else None
    table = probe_r2(component_representations(model), factors, test_items=held)
    print(f"probes fitted on {table.n_train} items, R^2 on {table.n_test} held-out ({args.holdout}) items")
    print(to_markdown(table))


if __name__ == "__main__":
    main()
