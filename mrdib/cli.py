"""The `mrdib` command line. Sub-commands import their heavy dependencies lazily, so that
`mrdib serve` works in an image without torch and `mrdib data ...` works without the service.

Commands are registered in the order of the workflow (`mrdib --help` lists them so): make a dataset,
train, export, serve, retrain nightly, check artifacts; then the research tools. Every command follows
one exit-code rule (mrdib/exits.py): 0 ok, 2 usage or data error, 1 internal error.
"""

from __future__ import annotations

import typer

from mrdib.cli_order import ordered_group
from mrdib.exits import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE

app = typer.Typer(
    cls=ordered_group("data", "train", "export", "serve", "retrain", "artifact", "baseline", "experiment", "study"),
    no_args_is_help=True,
    add_completion=False,
    # An internal error prints its traceback, but never the local variables (settings, tokens, user data).
    pretty_exceptions_show_locals=False,
    help=f"MRdIB multimodal recommender. Exit status: {EXIT_OK} ok, {EXIT_USAGE} usage or data error "
    f"(the message names the option or file), {EXIT_INTERNAL} internal error.",
)

# Registration of sub-commands. Each module keeps its own heavy imports inside its commands.
from training.data.cli import app as data_app  # noqa: E402

app.add_typer(data_app, name="data", help="Build, convert, generate and inspect datasets.")
from training.train_cli import experiment_command, study_command, train_command  # noqa: E402

app.command("train", help="Train one model to early stop; write the metrics and the checkpoint.")(train_command)
from training.export.cli import export as export_command  # noqa: E402

app.command("export", help="Export a trained checkpoint as a new, verified artifact version.")(export_command)
from service.cli import serve  # noqa: E402

app.command("serve", help="Serve recommendations over HTTP from the current artifact.")(serve)
from training.retrain import retrain_command  # noqa: E402

app.command("retrain", help="Merge new events and items, retrain, and promote the model if it passes the gate.")(
    retrain_command
)
from mrdib.artifact.cli import app as artifact_app  # noqa: E402

app.add_typer(artifact_app, name="artifact", help="Inspect and verify model artifacts.")
from training.baseline_cli import baseline_cmd  # noqa: E402

app.command("baseline", help="Research: fit a reference baseline and print its valid/test metrics.")(baseline_cmd)
app.command("experiment", help="Research: backbones x {plain, +MRdIB} x seeds; writes docs/RESULTS.md.")(
    experiment_command
)
app.command(
    "study", help="Research: equal-budget tuning of plain / content-only / +MRdIB rows, seeds, paired bootstrap."
)(study_command)
