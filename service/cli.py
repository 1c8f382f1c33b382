"""`mrdib serve`: start uvicorn over the service app factory.

Flags override the environment by being written into it before uvicorn starts, so that every
worker process (``--workers N`` re-imports the app) builds the same `Settings`. Secrets (the tokens) are
never flags: a command line is visible to every user of the machine (`ps`) and kept in shell histories;
they come from the environment or from files (`MRDIB_ADMIN_TOKEN_FILE`, see SECURITY.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from service.settings import Settings

EXIT_NO_MODEL = 2  # --require-model and nothing valid to serve: a data error, like every other one


def serve(
    artifacts: Path | None = typer.Option(
        None, "--artifacts",
        help="Artifacts root (env MRDIB_ARTIFACTS; default: mrdib-home/artifacts, where quickstart.sh publishes "
             "when run from the repository root)."),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
    require_model: bool = typer.Option(
        False, "--require-model",
        help="Exit with status 2 when no valid model can be loaded at start (env MRDIB_REQUIRE_MODEL); "
             "default: start anyway and answer 503 until one is published."),
) -> None:
    """Serve recommendations over HTTP from the artifact that `current` points to."""
    import uvicorn  # the service's dependencies are imported only when serving

    if artifacts is not None:
        os.environ["MRDIB_ARTIFACTS"] = str(artifacts.resolve())
    if require_model:
        os.environ["MRDIB_REQUIRE_MODEL"] = "true"
    from service.settings import Settings

    try:
        settings = Settings()
    except Exception as e:  # pydantic ValidationError: name the variable, no traceback
        typer.echo(f"error: invalid service settings: {e}", err=True)
        raise typer.Exit(2) from e
    import structlog

    from service.logs import configure_logging, uvicorn_log_config
    from service.server import uvicorn_options

    configure_logging(settings.log_level, settings.access_log, settings.secret_values())
    if not Path(settings.artifacts).is_dir() and not settings.require_model:
        structlog.get_logger("mrdib.service.cli").warning(
            "artifacts_root_missing", artifacts=str(settings.artifacts),
            detail="serving 503 until a model is published there")

    options = dict(host=host, port=port, log_level=settings.log_level.lower(),
                   log_config=uvicorn_log_config(settings.log_level),  # uvicorn's own lines as JSON too
                   **uvicorn_options(settings))
    if workers == 1:
        _serve_one(settings, options)
        return
    if settings.require_model:  # checked here, once: see model_store.check_loadable
        from service.model_store import ModelRequired, check_loadable

        try:
            check_loadable(settings)
        except ModelRequired as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_NO_MODEL) from None
    from service.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir()  # one /metrics for all workers (see service/metrics.py)
    uvicorn.run("service.api:create_app", factory=True, workers=workers, **options)


def _serve_one(settings: Settings, options: dict) -> None:
    """One process: the app is built here, so that a start refused for want of a model is told apart from
    uvicorn's other startup failures (all exit status 3)."""
    import uvicorn

    from service.api import create_app

    app = create_app(settings)
    try:
        uvicorn.run(app, **options)
    except SystemExit:
        reason = app.state.ctx.start_error
        if reason is not None:
            typer.echo(f"error: {reason}", err=True)
            raise typer.Exit(EXIT_NO_MODEL) from None
        raise
