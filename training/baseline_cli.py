"""`mrdib baseline`: fit a reference baseline, evaluate it with the standard protocol, print a table.

Heavy imports (torch, the baselines) happen inside the command so that `mrdib --help` and
the serving image stay light.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from mrdib.exits import fail


class BaselineName(StrEnum):
    pop = "pop"
    itemknn = "itemknn"
    bpr = "bpr"


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _parse_ks(ks: str) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError as e:
        raise typer.BadParameter(f"--ks must be comma-separated integers, got {ks!r}") from e
    if not out or min(out) < 1:
        raise typer.BadParameter(f"--ks needs positive cut-offs, got {ks!r}")
    return out


def baseline_cmd(
    data: Path = typer.Option(..., "--data", help="dataset folder (MMRec or MovieLens-100k layout)"),
    model: BaselineName = typer.Option(..., "--model", help="pop | itemknn | bpr"),
    seed: int = typer.Option(2024, "--seed", help="seed for BPR initialisation, shuffling and negatives"),
    out: Path | None = typer.Option(None, "--out", help="write the full report (JSON) here", show_default="none"),
    grid: bool = typer.Option(False, "--grid", help="pick hyper-parameters from the model's VALIDATION grid"),
    ks: str = typer.Option("10,20,50", "--ks", help="cut-offs, comma-separated"),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda"),
    mask_valid_at_test: bool = typer.Option(False, "--mask-valid-at-test", help="also mask valid items at test"),
    k: int = typer.Option(50, "--k", help="itemknn: neighbours per item"),
    modalities: str | None = typer.Option(
        None, "--modalities", help="itemknn: comma-separated modalities", show_default="all"),
    combine: str = typer.Option("concat", "--combine", help="itemknn: concat | mean"),
    dim: int = typer.Option(64, "--dim", help="bpr: embedding size"),
    lr: float = typer.Option(1e-3, "--lr", help="bpr: Adam learning rate"),
    reg: float = typer.Option(1e-4, "--reg", help="bpr: L2 weight"),
    batch_size: int = typer.Option(2048, "--batch-size", help="bpr: triples per step"),
    max_epochs: int = typer.Option(500, "--max-epochs", help="bpr: epoch limit"),
    patience: int = typer.Option(20, "--patience", help="bpr: evaluations without valid improvement"),
    threads: int | None = typer.Option(
        None, "--threads", help="torch CPU threads; 1 is much faster for small models on a busy machine",
        show_default="torch's"),
) -> None:
    """Fit a reference baseline and print its valid/test metrics (MMRec full-ranking protocol)."""
    from rich.console import Console
    from rich.table import Table

    from training.baselines import GRIDS, select_on_validation
    from training.data.dataset import DataError
    from training.data.load import load_dataset

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    cut_offs = _parse_ks(ks)
    params: dict[str, Any] = {}
    if model is BaselineName.itemknn:
        mods = [m.strip() for m in modalities.split(",") if m.strip()] if modalities else None
        params = {"k": k, "modalities": mods, "combine": combine}
    elif model is BaselineName.bpr:
        params = {
            "dim": dim,
            "lr": lr,
            "reg": reg,
            "batch_size": batch_size,
            "max_epochs": max_epochs,
            "patience": patience,
        }
    try:
        dataset = load_dataset(Path(data))
        result = select_on_validation(
            model.value,
            dataset,
            grid=GRIDS[model.value] if grid else None,
            base_params=params,
            seed=seed,
            device=device,
            ks=cut_offs,
            mask_valid_at_test=mask_valid_at_test,
        )
    except DataError as e:
        raise fail(e) from None

    console = Console()
    table = Table(
        title=f"{model.value} on {dataset.name} ({result.valid['n_users']} valid / {result.test['n_users']} test users)"
    )
    table.add_column("metric")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for key in result.valid:
        if key != "n_users":
            table.add_row(key, f"{result.valid[key]:.4f}", f"{result.test[key]:.4f}")
    console.print(table)
    console.print(
        f"params: {json.dumps(result.params)}"
        + (f"  best epoch: {result.best_epoch}" if result.best_epoch is not None else "")
    )
    if grid:
        console.print(f"selected on VALIDATION {result.selection_metric} among {len(result.candidates)} candidates")

    if out is not None:
        report = {
            "command": "mrdib baseline",
            "data": str(data),
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint(),
            "seed": seed,
            "grid": grid,
            "mask_valid_at_test": mask_valid_at_test,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": _cpu_model(), "platform": platform.platform()},
            **result.model_dump(),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {out}")
