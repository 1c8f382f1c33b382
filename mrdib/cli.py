"""The `mrdib` command line. Sub-commands import their heavy dependencies lazily, so that
`mrdib serve` works in an image without torch and `mrdib data ...` works without the service."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MRdIB multimodal recommender.")

# Registration of sub-commands. Each module keeps its own heavy imports inside its commands.
from training.data.cli import app as data_app  # noqa: E402

app.add_typer(data_app, name="data", help="Generate, load and inspect datasets.")
