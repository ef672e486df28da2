"""`ahop serve`: runs the API under uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket

import psutil
import uvicorn

from app.main import create_app
from app.settings import AppSettings

log = logging.getLogger("ahop.api")


def serve(settings: AppSettings) -> None:
    """Serve the API on `settings.host:settings.port` until SIGINT/SIGTERM.

    After the signal, requests in progress get `shutdown_timeout` seconds to finish; then they are cancelled and
    the application's shutdown kills the git commands it runs itself. Whatever child is left after that (the
    `git cat-file` and `ls-tree` processes GitPython starts to read mirrors for a scan or a pack) is killed too:
    a thread blocked on one would otherwise keep the process from ending, and a hung one would outlive it."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout,
    )
    LeavingNoChild(config).run()


class LeavingNoChild(uvicorn.Server):
    """uvicorn's server, which kills what the application left running once its shutdown is done (uvicorn then
    ends the process by raising the signal it caught again, so nothing after `run` would get the chance)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await asyncio.to_thread(kill_children)


def kill_children() -> None:
    """Kill every process this one started that is still running, by pid, and reap them."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
        log.warning("stopped git process %d left running at shutdown", child.pid)
    psutil.wait_procs(children, timeout=5)
