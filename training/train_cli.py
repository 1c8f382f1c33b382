"""`mrdib train` and `mrdib experiment`.

Scripts depend on this contract:

    mrdib train --data PATH --backbone NAME [--mrdib/--no-mrdib] [--seed N] [--epochs N]
                [--device auto|cpu|cuda] [--config FILE] [--set key=value ...] [--patience N]
                [--resume DIR] --out DIR
    torchrun --nproc_per_node N mrdib train ...          (DistributedDataParallel)
    mrdib experiment --config FILE

Precedence: defaults < --config file < --set overrides < explicit flags. With --resume DIR the
run's own DIR/config.json replaces the defaults and the file; flags still override (e.g. more
--epochs). Data problems (DataError) exit with status 2 and the message, never a traceback.
torch and the models are imported inside the commands so `mrdib --help` stays fast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from mrdib.exits import fail
from training.config import TrainConfig

_D = TrainConfig()  # the defaults --help shows (a --config file or --set overrides them)


def _preset_default(name: str) -> str:
    """--help text for a setting that the backbone's validated preset (training/presets.py) may replace."""
    return f"{getattr(_D, name):g}, or the backbone's validated preset"


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['backbone.n_layers=3', 'mrdib.beta=1e-3'] -> {'backbone.n_layers': 3, 'mrdib.beta': 0.001}.

    Values are parsed as YAML scalars/lists (so 3 -> int, 1e-3 -> float, [10,20] -> list, true -> bool).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        # YAML 1.1 reads '1e-3' as a string; accept it as the float it obviously is.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value) if any(c in value for c in ".eE") else value
        out[key.strip()] = value
    return out


def build_config(
    config: Path | None,
    overrides: dict[str, Any],
    resume: Path | None = None,
):
    """TrainConfig from (resume DIR's config.json | config file) + dotted overrides; errors name the source."""
    import json

    from pydantic import ValidationError

    from training.config import TrainConfig, load_config, set_dotted

    try:
        if resume is not None:
            path = Path(resume) / "config.json"
            if not path.is_file():
                raise typer.BadParameter(f"{path}: not a checkpoint directory (no config.json)", param_hint="--resume")
            data = json.loads(path.read_text(encoding="utf-8"))
            return TrainConfig.model_validate(set_dotted(data, overrides))
        return load_config(config, overrides)
    except ValidationError as e:
        where = f"{resume}/config.json" if resume else (str(config) if config else "options")
        raise typer.BadParameter(f"invalid configuration ({where}): {e}") from None
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None


def train_command(
    data: str | None = typer.Option(
        None, "--data", help="REQUIRED (or data: in --config): dataset folder (MMRec layout, e.g. from `mrdib data "
        "build`, or raw MovieLens-100k) or synth:<preset>.", show_default=False),
    out: Path | None = typer.Option(
        None, "--out", help="REQUIRED (or out: in --config; not with --resume): checkpoint directory to write.",
        show_default=False),
    backbone: str | None = typer.Option(
        None, "--backbone", help="bpr, lightgcn, vbpr, freedom, mgcn, or auto: one run per backbone with its "
        "validated settings, the best on validation kept (see --candidates).", show_default=f"{_D.backbone.name}"),
    candidates: str | None = typer.Option(
        None, "--candidates", help="With --backbone auto: comma-separated backbones to try.", show_default="all five"),
    mrdib: bool | None = typer.Option(
        None, "--mrdib/--no-mrdib", help="Add the MRdIB plug-in.", show_default=f"{_D.mrdib.enabled}"),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of initialisation, negatives and shuffling.", show_default=f"{_D.seed}"),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Maximum epochs (early stopping may end sooner).",
        show_default=_preset_default("epochs")),
    patience: int | None = typer.Option(
        None, "--patience", help="Epochs without validation improvement before stopping.",
        show_default=_preset_default("patience")),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Triples per step; replaces the preset's steps_per_epoch.",
        show_default=_preset_default("batch_size")),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate.", show_default=_preset_default("lr")),
    device: str | None = typer.Option(
        None, "--device", help="auto (cuda if available), cpu or cuda.", show_default=f"{_D.device}"),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="bf16 autocast on CUDA (ignored on CPU).", show_default=f"{_D.amp}"),
    config: Path | None = typer.Option(
        None, "--config", help="YAML or TOML TrainConfig file (configs/*.yaml).", show_default="built-in defaults"),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Dotted override key=value, e.g. backbone.embedding_dim=32 (repeatable).",
        show_default="none"),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this checkpoint DIR (its own config; flags still override).",
        show_default="start afresh"),
    cache_dir: Path = typer.Option(Path("runs/cache"), "--cache-dir", help="Where synth:<preset> data go."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per epoch."),
) -> None:
    """Train one model to early stop; write metrics.json, metrics.jsonl, curves.png and the checkpoint.

    The defaults shown are the built-in configuration's; the settings validated for the chosen backbone (with
    or without --mrdib; training/presets.py, docs/RESULTS.md) replace them, a --config file or --set changes
    those, and a flag given here wins over all. Exit status 2: bad options or data (the message says which).
    """
    from training.data.dataset import DataError

    overrides = parse_overrides(set_)
    auto = backbone == "auto"
    if candidates is not None and not auto:
        raise typer.BadParameter("--candidates goes with --backbone auto", param_hint="--candidates")
    if auto and resume is not None:
        raise typer.BadParameter("--backbone auto cannot --resume; resume the chosen run itself", param_hint="--resume")
    flags = {
        "data": data,
        "backbone.name": None if auto else backbone,
        "mrdib.enabled": mrdib,
        "seed": seed,
        "epochs": epochs,
        "patience": patience,
        "batch_size": batch_size,
        "lr": lr,
        "device": device,
        "amp": amp,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = build_config(config, overrides, resume)
    out_dir = resume if resume is not None else (out or (Path(cfg.out) if cfg.out else None))
    if out_dir is None:
        raise typer.BadParameter("--out DIR is required (or out: in the config)", param_hint="--out")
    if cfg.data is None:
        raise typer.BadParameter("--data PATH is required (or data: in the config)", param_hint="--data")
    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise typer.BadParameter("--resume continues in its own directory; drop --out or make it the same")
    cfg = cfg.model_copy(update={"out": str(out_dir)})
    try:
        from training.experiment import resolve_dataset
        from training.trainer import train

        dataset = resolve_dataset(cfg.data, cache_dir)
        if auto:
            from training.auto import CANDIDATES, train_auto

            names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else list(CANDIDATES)
            try:
                chosen = train_auto(config, {**overrides, "out": str(out_dir)}, dataset, Path(out_dir), names,
                                    progress=progress, log=lambda m: typer.echo(m, err=True))  # fmt: skip
            except ValueError as e:
                raise typer.BadParameter(str(e), param_hint="--candidates") from None
            scores = ", ".join(f"{n} {v:.4f}" for n, v in chosen.valid.items())
            typer.echo(f"auto: selected {chosen.backbone} on validation {chosen.metric} ({scores})")
            result = chosen.result
        else:
            result = train(cfg, dataset, Path(out_dir), resume=resume is not None, progress=progress)
    except DataError as e:
        raise fail(e) from None
    if result.test:
        k = cfg.valid_metric
        typer.echo(
            f"best epoch {result.best_epoch + 1}: valid {k}={result.valid[k]:.4f} test {k}={result.test[k]:.4f} "
            f"({result.epochs_run} epochs, {result.seconds:.1f}s) -> {out_dir}"
        )


def experiment_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML (see configs/experiment-*.yaml)."),
    only: list[str] | None = typer.Option(
        None, "--only", help="Run only rows whose label contains this text (repeatable).", show_default="all rows"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and exit."),
    report_only: bool = typer.Option(
        False, "--report-only", help="Train nothing: write the results section from the runs finished so far."
    ),
) -> None:
    """Backbones x {plain, +MRdIB} x seeds (+ ablations) on one or more datasets; writes docs/RESULTS.md."""
    from training.data.dataset import DataError
    from training.experiment import load_experiment, run_experiment

    try:
        exp = load_experiment(config)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    try:
        run_experiment(exp, config_path=config, only=only or [], dry_run=dry_run, report_only=report_only)
    except DataError as e:
        raise fail(e) from None


def study_command(
    config: Path = typer.Option(..., "--config", help="Study YAML (see configs/study-*.yaml). Required."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Runs trained at once (default: the file's jobs)."),
) -> None:
    """Equal-budget tuning of every row (plain, content-only, +MRdIB), seeds, paired bootstrap; writes RESULTS.md."""
    from rich.console import Console

    from training.data.dataset import DataError
    from training.study import load_study, run_study

    try:
        study = load_study(config)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None
    if jobs is not None:
        study = study.model_copy(update={"jobs": jobs})
    console = Console(stderr=True)
    try:
        run_study(study, config, log=lambda msg: console.print(msg, highlight=False))
    except DataError as e:
        raise fail(e) from None

