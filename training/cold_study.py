"""Cold-item study: how well a trained model ranks items it never saw an interaction of.

    python -m training.cold_study --data runs/cache/synth-synergy-sparse --seeds 1,2,3 \
        --config configs/freedom.yaml --variant plain:mrdib.enabled=false \
        --variant mrdib:mrdib.enabled=true --variant "no synergy:mrdib.enabled=true,mrdib.use_synergy=false"

Why a separate study: in the standard per-user split almost every test item also has training
interactions, so its learned ID vector can carry whatever the content encoders miss (on the synergy-heavy
catalogues the ID vectors learn the planted XOR-like factor from interactions alone). A content term only
matters where the ID vector has nothing to learn from: items held out with ALL their interactions.

Protocol (training/export/bench.py `cold_split` / `without_items`): 20% of the items (seeded) are removed
with every interaction; the model is trained and early-stopped (validation Recall@20 on the remaining
warm items) on the rest; then each user's held-out interactions with cold items are the targets and
only cold items are candidates, ranked by the model's own item vectors (for MRdIB, ID part at its
initialisation + the content vector from the features). The cold items are halved (seeded): "cold-valid"
is for choosing between variants, "cold-test" is the reported number. Numbers: mean and sample std over
seeds; the seed drives the cold split, its halves and the training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from training.data.dataset import InteractionDataset
from training.data.load import load_dataset
from training.export.bench import cold_split, interactions_with, without_items
from training.export.evaluate import recall_at_k


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """'name:key=value,key=value' -> (name, overrides); values parsed as YAML scalars."""
    import yaml

    name, _, spec = text.partition(":")
    if not name or not spec:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value[,key=value...]")
    overrides: dict[str, object] = {}
    for item in _top_level_split(spec):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise SystemExit(f"--variant {text!r}: value of {key.strip()!r} is not valid YAML: {e}") from e
    return name, overrides


def _top_level_split(spec: str) -> list[str]:
    """Split on commas outside [...] / {...}, so that list values like topk=[10, 20] stay whole."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def cold_recall(ds: InteractionDataset, config: Path | None, overrides: dict[str, object], seed: int,
                k: int = 20, frac: float = 0.2, threads: int = 1) -> dict[str, float]:
    """Train without the seed's cold items; Recall@k of the cold items among cold items, plus validation."""
    from training.checkpoint import load_embeddings
    from training.config import load_config
    from training.trainer import train

    cold = cold_split(ds, frac, seed)
    cfg = load_config(config, {**overrides, "seed": seed, "device": "cpu", "threads": threads})
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, without_items(ds, cold), Path(tmp), progress=False, curves=False)
        emb = load_embeddings(Path(tmp))
    # half of the cold items (seeded) for choosing between variants, the other half for reporting
    rows = np.flatnonzero(cold)
    pick = np.random.default_rng(seed + 10_000).permutation(len(rows))
    halves = {"cold_valid": rows[pick[: len(rows) // 2]], "cold_test": rows[pick[len(rows) // 2 :]]}
    out: dict[str, float] = {}
    for name, items in halves.items():
        part = np.zeros(ds.n_items, dtype=bool)
        part[items] = True
        out[f"{name}_recall@{k}"] = recall_at_k(emb.user, emb.item, interactions_with(ds, part), None, k,
                                                 candidates=part)
    return {**out, "valid_recall@20": float(result.valid.get("recall@20", float("nan"))),
            "epochs": result.epochs_run}


COLUMNS = ("cold_valid_recall@20", "cold_test_recall@20", "valid_recall@20")


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--variant", action="append", required=True, help="NAME:key=value[,key=value...]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    a = p.parse_args(argv)
    ds = load_dataset(a.data)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows, raw = [], {}
    for text in a.variant:
        name, overrides = parse_variant(text)
        runs = [cold_recall(ds, a.config, overrides, s, threads=a.threads) for s in seeds]
        raw[name] = {"overrides": overrides, "runs": runs}
        rows.append(f"| {name} | " + " | ".join(_mean_sd([r[key] for r in runs]) for key in COLUMNS) +
                    f" | {', '.join(f'{r[COLUMNS[1]]:.4f}' for r in runs)} |")
        print(rows[-1], flush=True)
    print("| variant | cold-valid Recall@20 | cold-test Recall@20 | warm valid Recall@20 | cold-test per seed |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if a.json:
        a.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
