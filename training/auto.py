"""`mrdib train --backbone auto`: choose the backbone, with its validated settings, on validation.

The budget is stated and small: one training run per candidate backbone (all five unless `candidates`
narrows it), each with the settings validated for that backbone (training/presets.py) and the user's own
file and flags on top, with or without the plug-in as asked. The run with the best VALIDATION metric wins
and its checkpoint becomes `out` itself, so `mrdib export --checkpoint out` works as after any run; every
candidate stays under `out/auto/<backbone>/` and `out/auto.json` lists their validation scores. Test metrics
are read for the winner only: choosing on them would be selection on test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import BackboneConfig, load_config
from training.data.dataset import InteractionDataset
from training.trainer import TrainResult

CANDIDATES: tuple[str, ...] = BackboneConfig.model_fields["name"].annotation.__args__  # type: ignore[union-attr]
AUTO_DIR, AUTO_REPORT = "auto", "auto.json"


@dataclass(frozen=True)
class AutoResult:
    backbone: str
    valid: dict[str, float]  # validation metric of every candidate (the selection criterion)
    metric: str
    result: TrainResult  # the winner's run (trained in out/auto/<backbone>, copied to out)


def train_auto(
    config: Path | None,
    overrides: dict[str, Any],
    dataset: InteractionDataset,
    out: Path,
    candidates: Sequence[str] = CANDIDATES,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> AutoResult:
    """Train every candidate into out/auto/<name>, copy the validation winner's checkpoint into `out`."""
    from training.trainer import train

    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown or not candidates:
        raise ValueError(f"unknown candidate backbone(s) {unknown}; choose among {list(CANDIDATES)}")
    out = Path(out)
    scores: dict[str, float] = {}
    results: dict[str, TrainResult] = {}
    metric = "recall@20"
    for name in candidates:
        cfg = load_config(config, {**overrides, "backbone.name": name})
        metric = cfg.valid_metric
        run = out / AUTO_DIR / name
        log(f"auto: training {name}{' +MRdIB' if cfg.mrdib.enabled else ''} ({len(scores) + 1}/{len(candidates)})")
        results[name] = train(cfg.model_copy(update={"out": str(run)}), dataset, run, progress=progress)
        scores[name] = results[name].valid[metric]
        log(f"auto: {name}: valid {metric} = {scores[name]:.4f}")
    best = max(scores, key=lambda n: scores[n])  # first of equal scores: candidates' order
    for item in (out / AUTO_DIR / best).iterdir():
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    report = {"selected": best, "valid_metric": metric, "valid": scores, "candidates": list(candidates)}
    (out / AUTO_REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return AutoResult(best, scores, metric, results[best])
