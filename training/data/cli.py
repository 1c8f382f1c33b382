"""`mrdib data ...`: inspect, generate and convert datasets.

Invalid data exits with code 2 and the DataError message (file, line, problem) on stderr, never
a traceback: the person at the terminal needs to know which file to fix, not where we noticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from training.data.dataset import DataError, InteractionDataset

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Generate, load and inspect datasets.")

EXIT_DATA_ERROR = 2


def _fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(EXIT_DATA_ERROR)


def summarize(ds: InteractionDataset) -> dict[str, Any]:
    """The numbers `inspect` prints, as a plain dict (also used by `--json`)."""
    counts = ds.counts()
    total = sum(counts.values())
    cells = ds.n_users * ds.n_items
    return {
        "name": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": counts,
        "total": total,
        "sparsity": 1.0 - total / cells if cells else 1.0,
        "users_with_train": int((ds.train_csr().getnnz(axis=1) > 0).sum()),
        "items_with_train": int((ds.item_popularity() > 0).sum()),
        "modalities": ds.feature_dims,
        "warnings": list(ds.warnings),
    }


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Dataset folder (MMRec or MovieLens-100k layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Load a dataset folder (layout auto-detected), validate it and print its summary."""
    from training.data.load import load_dataset

    try:
        ds = load_dataset(path)
    except DataError as e:
        raise _fail(e) from None
    s = summarize(ds)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{s['name']} ({path})", show_header=False)
    table.add_row("users", f"{s['users']:,}")
    table.add_row("items", f"{s['items']:,}")
    for split, n in s["interactions"].items():
        table.add_row(f"{split} interactions", f"{n:,}")
    table.add_row("total interactions", f"{s['total']:,}")
    table.add_row("sparsity", f"{s['sparsity']:.4%}")
    table.add_row("users / items with training data", f"{s['users_with_train']:,} / {s['items_with_train']:,}")
    for m, d in s["modalities"].items():
        table.add_row(f"modality {m}", f"dim {d}")
    console = Console()
    console.print(table)
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the MMRec-layout dataset into."),
    preset: str = typer.Option("small", help="Starting point: small, baby, synergy-heavy or synergy-sparse."),
    config: Path | None = typer.Option(None, help="YAML/JSON file with SynthConfig fields (applied after the preset)."),
    users: int | None = typer.Option(None, "--users", help="Number of users."),
    items: int | None = typer.Option(None, "--items", help="Number of items."),
    interactions: int | None = typer.Option(None, "--interactions", help="Total interactions."),
    modalities: int | None = typer.Option(
        None, "--modalities", help="Number of modalities (image, text, audio, m3, ...)."),
    dims: str | None = typer.Option(None, "--dims", help="Comma-separated feature dims, one per modality."),
    seed: int | None = typer.Option(None, "--seed"),
    synergy_strength: float | None = typer.Option(None, "--synergy-strength", help="Weight of synergy factors."),
    synergy_heavy: bool = typer.Option(False, "--synergy-heavy", help="Use the synergy-heavy factor mix."),
    n_redundant: int | None = typer.Option(None, "--redundant", help="Number of redundant factors."),
    n_unique: int | None = typer.Option(None, "--unique", help="Unique factors per modality."),
    n_synergy: int | None = typer.Option(None, "--synergy", help="Number of synergy factors."),
    n_noise: int | None = typer.Option(None, "--noise", help="Irrelevant latent dims per modality."),
    name: str | None = typer.Option(None, "--name", help="Dataset name (the .inter stem)."),
) -> None:
    """Generate a synthetic catalogue with planted redundant/unique/synergistic factors (MMRec layout)."""
    import yaml
    from pydantic import ValidationError

    from training.data.synth import SYNERGY_HEAVY, SynthConfig, default_modalities, generate_synthetic

    overrides: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise _fail(DataError(f"{config}: cannot read synth config: {e}")) from None
        if not isinstance(loaded, dict):
            raise _fail(DataError(f"{config}: synth config must be a mapping of SynthConfig fields"))
        overrides.update(loaded)
    if synergy_heavy:
        overrides.update(SYNERGY_HEAVY)
    if modalities is not None:
        overrides["modalities"] = default_modalities(modalities)
        overrides.setdefault("dims", None)
    if dims is not None:
        try:
            overrides["dims"] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise _fail(DataError(f"--dims must be comma-separated integers, got {dims!r}")) from None
    cli = dict(
        n_users=users, n_items=items, n_interactions=interactions, seed=seed, synergy_strength=synergy_strength,
        n_redundant=n_redundant, n_unique=n_unique, n_synergy=n_synergy, n_noise=n_noise, name=name,
    )  # fmt: skip
    overrides.update({k: v for k, v in cli.items() if v is not None})
    try:
        cfg = SynthConfig.preset(preset, **overrides)  # type: ignore[arg-type]
    except (ValidationError, ValueError) as e:
        raise _fail(e) from None
    try:
        generate_synthetic(cfg, out)
    except (OSError, DataError) as e:
        raise _fail(e) from None
    typer.echo(
        f"wrote {out}: {cfg.n_users} users, {cfg.n_items} items, {cfg.n_interactions} interactions, "
        f"modalities {dict(zip(cfg.modalities, cfg.dims or [], strict=True))}"
    )


@app.command("convert-grouplens")
def convert_grouplens(
    src: Path = typer.Argument(..., help="MovieLens-100k folder (u.data, u.item, u.user)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the MMRec layout into."),
    seed: int = typer.Option(2024, "--seed", help="Seed of the per-user split."),
    text: bool = typer.Option(False, "--text", help="Also embed titles (all-MiniLM-L6-v2; needs the text extra)."),
    name: str = typer.Option("ml100k", "--name", help="Dataset name (the .inter stem)."),
) -> None:
    """Convert MovieLens-100k to the MMRec layout (implicit feedback, MMRec split, meta [+ text] features)."""
    from training.data.grouplens import load_grouplens
    from training.data.mmrec import write_mmrec

    try:
        ds = load_grouplens(src, seed=seed, text=text)
        write_mmrec(ds, out, name=name)
    except (DataError, RuntimeError, OSError) as e:
        raise _fail(e) from None
    c = ds.counts()
    typer.echo(
        f"wrote {out}: {ds.n_users} users, {ds.n_items} items, {c['train']}/{c['valid']}/{c['test']} "
        f"train/valid/test, modalities {ds.feature_dims}"
    )
