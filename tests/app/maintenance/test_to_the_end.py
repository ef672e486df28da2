"""Work that holds locks runs to its end even when the run is cancelled, twice (a second Ctrl-C, a shutdown)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.maintenance.to_the_end import to_the_end


async def test_a_step_runs_to_its_end_through_two_cancels_and_the_cancel_is_raised_after() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    asked_to_stop = threading.Event()

    def deleting() -> None:
        started.set()
        release.wait(timeout=60)  # the bound only catches a hang
        finished.set()

    waiting = asyncio.create_task(to_the_end(asyncio.to_thread(deleting), on_cancel=asked_to_stop.set))
    assert await asyncio.to_thread(started.wait, 60)
    waiting.cancel()
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0.05)
    assert not waiting.done(), "the cancel surfaced while the step was still running"
    release.set()

    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert finished.is_set(), "the cancel surfaced before the step ended"
    assert asked_to_stop.is_set()


async def test_a_step_that_ends_gives_its_result() -> None:
    assert await to_the_end(asyncio.to_thread(lambda: 42)) == 42
