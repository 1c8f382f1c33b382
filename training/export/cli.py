"""`mrdib export`: checkpoint -> published, verified artifact version.

Prints the version id, where it went, and the recall figures of the towers and the indexes.
Bad input (missing checkpoint files, data that changed since training, an invalid factory
string, ...) exits with code 2 and the message on stderr, not a traceback. Heavy imports
(torch, faiss, onnx) happen inside the command so that `mrdib --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mrdib.exits import fail


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Training checkpoint directory (`mrdib train --out`)."),
    out: Path = typer.Option(..., "--out", help="Artifacts root; the new version becomes ROOT/current."),
    data: Path | None = typer.Option(
        None, "--data", help="Dataset folder.", show_default="the path in the checkpoint's dataset.json"),
    keep: int = typer.Option(5, "--keep", min=1, help="Published versions to keep (current is never pruned)."),
    index_factory: str | None = typer.Option(
        None, "--index-factory", help="FAISS factory string.",
        show_default="Flat up to 200k items, then HNSW32 / IVF-PQ"),
    max_history: int = typer.Option(50, "--max-history", min=1, max=1000, help="User tower history length cap."),
    tower_epochs: int = typer.Option(60, "--tower-epochs", min=1, help="Epochs of each tower fit."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tower fits and of the index training sample."),
) -> None:
    """Export a trained checkpoint as a new artifact version (towers, indexes, manifest) and publish it."""
    from mrdib.artifact.schema import ArtifactError
    from training.data.dataset import DataError
    from training.export.writer import ExportError, ExportOptions, run_export

    opts = ExportOptions(
        checkpoint=checkpoint, out=out, data=data, keep=keep, index_factory=index_factory,
        max_history=max_history, tower_epochs=tower_epochs, seed=seed,
    )
    try:
        res = run_export(opts)
    except (ExportError, DataError, ArtifactError) as e:
        raise fail(e) from None
    m = res.manifest
    typer.echo(f"published {m.model_version} -> {res.path} ({res.seconds:.1f} s)")
    for name, value in m.tower_metrics.items():
        typer.echo(f"  tower  {name} = {value:.4g}")
    for metric, spec in m.indexes.items():
        typer.echo(f"  index  {metric}: {spec.factory} recall@{spec.recall_k} vs exact = {spec.recall_at_k:.4f}")
