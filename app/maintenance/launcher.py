"""Runs started over HTTP execute in the server process, in the background; the server's shutdown stops them and
their rows say so (`_finish` records a cancelled run as failed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.maintenance.start import StartedRun

log = logging.getLogger("ahop.maintenance")


class RunLauncher:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[object]] = set()

    def launch(self, run: StartedRun) -> None:
        task: asyncio.Task[object] = asyncio.create_task(run.execute(None), name=f"maintenance-run-{run.run_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
