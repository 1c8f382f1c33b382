"""`mrdib serve`: start uvicorn over the service app factory.

Flags override the environment by being written into it before uvicorn starts, so that every
worker process (``--workers N`` re-imports the app) builds the same `Settings`. Secrets (the tokens) are
never flags: a command line is visible to every user of the machine (`ps`) and kept in shell histories;
they come from the environment or from files (`MRDIB_ADMIN_TOKEN_FILE`, see SECURITY.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def serve(
    artifacts: Path | None = typer.Option(None, "--artifacts", help="artifacts root (env MRDIB_ARTIFACTS)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes"),
) -> None:
    """Serve recommendations over HTTP from the artifact that `current` points to."""
    import uvicorn  # the service's dependencies are imported only when serving

    if artifacts is not None:
        os.environ["MRDIB_ARTIFACTS"] = str(artifacts.resolve())
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
    if not Path(settings.artifacts).is_dir():
        structlog.get_logger("mrdib.service.cli").warning(
            "artifacts_root_missing", artifacts=str(settings.artifacts),
            detail="serving 503 until a model is published there")

    if workers > 1:  # one /metrics for all workers (see service/metrics.py)
        from service.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir()
    uvicorn.run("service.api:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=settings.log_level.lower(), log_config=uvicorn_log_config(settings.log_level),  # JSON too
                **uvicorn_options(settings))
