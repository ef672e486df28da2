"""The functions a worker runs for arq jobs."""

from __future__ import annotations

import os
import socket
from typing import Any

from worker.protocol import PROTOCOL_VERSION


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    """Report which worker took the job, so a caller can tell a pool is being served."""
    return {
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "pool": ctx["pool"],
        "protocol": PROTOCOL_VERSION,
    }
