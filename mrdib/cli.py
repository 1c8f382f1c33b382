"""The `mrdib` command line. Sub-commands import their heavy dependencies lazily, so that
`mrdib serve` works in an image without torch and `mrdib data ...` works without the service."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MRdIB multimodal recommender.")

# Registration of sub-commands. Each module keeps its own heavy imports inside its commands.
from training.data.cli import app as data_app  # noqa: E402

app.add_typer(data_app, name="data", help="Generate, load and inspect datasets.")
from training.baseline_cli import baseline_cmd  # noqa: E402

app.command("baseline")(baseline_cmd)
from training.train_cli import register as register_train  # noqa: E402

register_train(app)
from service.cli import serve  # noqa: E402

app.command("serve")(serve)
from training.retrain import retrain_command  # noqa: E402

app.command("retrain")(retrain_command)
from mrdib.artifact.cli import app as artifact_app  # noqa: E402
from training.export.cli import export as export_command  # noqa: E402

app.add_typer(artifact_app, name="artifact", help="Inspect and verify model artifacts.")
app.command("export", help="Export a trained checkpoint as a new artifact version.")(export_command)
