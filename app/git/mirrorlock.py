"""The per-mirror lock: one fetch or removal of a mirror at a time, across threads, requests and processes."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

POLL_INTERVAL = 0.05
"""Seconds between two tries of an async waiter: short against a fetch, and a try costs one system call."""


class MirrorLock:
    """An exclusive `flock` on `<mirror>.lock`, so that several API processes on one data directory serialize too.

    It belongs to this object's open file, not to a thread, so it may be taken in one thread (or on the event loop)
    and released in another (the git thread that fetches).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Wait until the lock is ours (blocking the calling thread)."""
        self._take(fcntl.LOCK_EX)

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; never waits."""
        try:
            self._take(fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _take(self, operation: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle, operation)
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def release(self) -> None:
        """Give the lock up; harmless when it is not held."""
        handle, self._handle = self._handle, None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for a block of blocking code."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire_async(self) -> None:
        """Wait for the lock holding no thread: try it without blocking, sleep a little, try again. A waiter that
        is cancelled simply stops trying, so a request that has gone never takes the lock."""
        while not self.try_acquire():  # noqa: ASYNC110 -- a flock has no event to await
            await asyncio.sleep(POLL_INTERVAL)
