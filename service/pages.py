"""The demo page (`GET /ui`) and its static files, shipped in the package (service/ui/): plain HTML, CSS and
JavaScript, no build step, nothing loaded from a CDN. The page talks to the public routes only, like any
client would (see service/ui/app.js).

The API documentation (`/docs`, `/redoc`) is served the same way, offline: the app is made by fastapi-offline,
which ships Swagger UI's and ReDoc's assets in its package (FastAPI's own pages load them from a CDN, and show
a blank page on a machine without internet).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).parent / "ui"
DOCS_STATIC = "/docs/static"  # where the Swagger UI / ReDoc assets are served


def add_ui(app: FastAPI) -> None:
    """GET /ui (the page) and /ui/static/* (its script and style sheet)."""

    @app.get("/ui", include_in_schema=False)
    async def ui() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/ui/static", StaticFiles(directory=UI_DIR), name="ui-static")
