"""The per-mirror lock: one fetch or removal of a mirror at a time, taken from threads or from async code."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class MirrorLock:
    """An exclusive `flock` on `<mirror>.lock`.

    It belongs to this object's open file, not to a thread, so it may be taken in one thread and released in
    another (an async caller takes it in a worker thread and hands it to the thread that fetches).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Wait until the lock is ours."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
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
        """Wait for the lock without blocking the event loop. Cancelled while waiting, the lock is given up as soon
        as the waiting thread gets it (a thread cannot be interrupted), so a cancelled request never keeps it."""
        waiting = asyncio.ensure_future(asyncio.to_thread(self.acquire))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            waiting.add_done_callback(lambda _: self.release())
            raise
