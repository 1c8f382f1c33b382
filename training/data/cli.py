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
