"""Waiting in tests: poll until something holds, with a bound that only catches hangs (never a timing assertion)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(check: Callable[[], Awaitable[Any]], what: str, bound: float = 30) -> Any:
    """Poll `check` until it returns something true, and return that; the bound only catches hangs."""
    deadline = time.monotonic() + bound
    while True:
        if result := await check():
            return result
        assert time.monotonic() < deadline, f"still waiting after {bound}s for {what}"
        await asyncio.sleep(0.05)
