"""`mrdib artifact ...`: check published artifacts. No torch, faiss or onnxruntime needed."""

from __future__ import annotations

from pathlib import Path

import typer

from mrdib.artifact import store
from mrdib.artifact.schema import ArtifactError
from mrdib.exits import fail

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect and verify model artifacts.")



@app.callback()
def _group() -> None:
    """Inspect and verify model artifacts (keeps `verify` a sub-command even while it is the only one)."""


def resolve(path: Path) -> Path:
    """A version directory as given, or ROOT/<current> when `path` is an artifacts root (or ROOT/current)."""
    path = Path(path)
    if path.name == store.CURRENT and path.is_file():
        path = path.parent
    if (path / store.CURRENT).is_file():
        v = store.current_version(path)
        if v is None:  # pragma: no cover - is_file() above makes this unreachable
            raise ArtifactError(f"{path}: nothing published")
        return path / v
    if path.is_dir() and not (path / "manifest.json").exists():
        raise ArtifactError(
            f"{path}: neither an artifact version (no manifest.json) nor an artifacts root (no `current` file)"
        )
    return path


@app.command()
def verify(path: Path = typer.Argument(..., help="A version directory, an artifacts root, or ROOT/current.")) -> None:
    """Check one artifact version: manifest schema, every file's sha256, the array shapes, and that every vector
    can be served (finite, norms within the bound; see mrdib/artifact/bounds.py). Exit code 2 when it is refused."""
    try:
        target = resolve(path)
        m = store.verify_artifact(target)
    except ArtifactError as e:  # a wrong folder or a corrupt artifact: a data error, exit 2
        raise fail(e) from None
    typer.echo(
        f"ok {m.model_version} ({target}): {m.n_users} users, {m.n_items} items, d={m.embedding_dim}, "
        f"{len(m.files)} files verified"
    )
