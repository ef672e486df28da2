"""`ahop serve`: runs the API under uvicorn."""

from __future__ import annotations

import uvicorn

from app.main import create_app
from app.settings import AppSettings


def serve(settings: AppSettings) -> None:
    """Serve the API on `settings.host:settings.port` until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="info", lifespan="on"
    )
    uvicorn.Server(config).run()
