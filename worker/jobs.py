"""The functions a worker runs for arq jobs."""

from __future__ import annotations

import os
import socket
from typing import Any

from worker.attempts import Attempts
from worker.protocol import PROTOCOL_VERSION


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """Report which worker took the job, so a caller can tell a pool is being served."""
    return {
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "pool": ctx["pool"],
        "protocol": PROTOCOL_VERSION,
    }


async def run_task(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Run one attempt of a task (`worker.protocol.TaskJob` on the wire)."""
    attempts: Attempts = ctx["attempts"]
    return await attempts.run(job)
