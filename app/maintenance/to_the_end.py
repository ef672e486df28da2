"""Waiting for work that must not be abandoned half-way, even when the waiting task is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

ResultT = TypeVar("ResultT")


async def to_the_end(step: Awaitable[ResultT], on_cancel: Callable[[], None] | None = None) -> ResultT:
    """Await `step` to its end even when cancelled (once or again while it ends), then raise the cancellation.

    A thread cannot be stopped from outside: `on_cancel` is how to ask it to finish early (a `threading.Event`'s
    `set`). Until it ends, the locks and connections it relies on stay held.
    """
    work = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():
                raise  # the work itself was cancelled
            if not cancelled and on_cancel is not None:
                on_cancel()
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
