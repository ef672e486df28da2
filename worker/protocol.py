"""The contract between the server and its workers: queue and job names, and the wire encoding of jobs.

This is the only module of `worker` that `app` may import.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
"""Carried by every job; a worker refuses versions it does not know."""

DEFAULT_POOL = "default"
QUEUE_PREFIX = "ahop:queue:"

PING_JOB = "ping"
"""A job that only reports who took it: proves a worker of a pool is consuming."""


def queue_name(pool: str) -> str:
    """The Redis queue that the workers of `pool` consume."""
    return QUEUE_PREFIX + pool


def serialize(value: dict[str, Any]) -> bytes:
    """Encode a job or its result. JSON rather than arq's default pickle: a Redis writer cannot run code on us."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    """Decode what `serialize` wrote."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object in a job, got {type(value).__name__}")
    return value
