"""`ahop serve`: runs the API under uvicorn."""

from __future__ import annotations

import uvicorn

from app.main import create_app
from app.settings import AppSettings


def serve(settings: AppSettings) -> None:
    """Serve the API on `settings.host:settings.port` until SIGINT/SIGTERM.

    After the signal, requests in progress get `shutdown_timeout` seconds to finish; then they are cancelled and
    the application's shutdown kills the git commands still running, so the process ends within that bound."""
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="info", lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )  # fmt: skip
    uvicorn.Server(config).run()
