"""The git pool: the API's git work runs on threads of its own, a bounded number at once and a few per tenant.

Git work (fetch, ls-remote, reading a mirror's trees to scan, resolve or pack them) can take minutes. On asyncio's
default thread pool it filled every thread under a flood of syncs, and whatever else used that pool (the health
probe's S3 check, downloads) queued behind it. Here git has `size` threads of its own, and one tenant holds at most
`per_tenant` of them, so a tenant that floods syncs leaves the other slots to other tenants.

A tenant over its limit waits for a slot asynchronously (a coroutine and its socket, no thread) rather than being
refused with 429: a sync or an import is a request whose answer its caller wants, waiting is what it would do after a
429 anyway, and a waiting request whose caller gives up costs nothing, because the work starts only if the caller is
still there once the slot is free (`client_gone`). Only then is a thread taken.

A slot is held until its thread is done, even when the request that asked for it is cancelled: a thread cannot be
interrupted, and giving its slot away early would let more git work run than the pool's size.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.errors import Unavailable
from app.git.processes import GitProcesses

T = TypeVar("T")


class ClientPresence(Protocol):
    """Whether the client of a request is still connected; the API sets one per request (`CLIENT`)."""

    def watch(self) -> None:
        """Start looking out for the client's disconnection (before a wait)."""

    def gone(self) -> bool:
        """Whether the client disconnected since `watch` was first called."""


CLIENT: ContextVar[ClientPresence | None] = ContextVar("ahop_git_client", default=None)


def watch_client() -> None:
    """Look out for the request's client leaving while this waits for git (nothing, outside a request)."""
    if (client := CLIENT.get()) is not None:
        client.watch()


def client_gone() -> bool:
    """Whether the request's client left while this waited (never, outside a request)."""
    client = CLIENT.get()
    return client is not None and client.gone()


@dataclass
class GitLoad:
    """How much git work this process has, by state: what an operator looks at when syncs are slow to answer."""

    waiting_lock: int = 0
    """Waiting for a mirror's lock (another fetch or the removal of that mirror holds it)."""
    waiting_slot: int = 0
    """Waiting for a slot of the pool, or of its tenant."""
    running: int = 0

    def figures(self) -> dict[str, int]:
        return {"waiting_lock": self.waiting_lock, "waiting_slot": self.waiting_slot, "running": self.running}

    @contextmanager
    def waiting_for_lock(self) -> Iterator[None]:
        self.waiting_lock += 1
        try:
            yield
        finally:
            self.waiting_lock -= 1


class GitPool:
    """At most `size` pieces of git work at once, at most `per_tenant` of them for one tenant."""

    def __init__(self, size: int, per_tenant: int) -> None:
        self.size = size
        self.per_tenant = min(per_tenant, size)
        self.processes = GitProcesses()
        """Every git command of this pool's work runs through it, so a shutdown can kill them all."""
        self.load = GitLoad()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ahop-git")
        self._slots: asyncio.Semaphore | None = None
        self._tenants: dict[str, asyncio.Semaphore] = {}

    async def run(
        self,
        tenant_id: object,
        work: Callable[..., T],
        *args: object,
        for_caller: bool = True,
        not_started: Callable[[], None] | None = None,
    ) -> T:
        """Run the blocking `work(*args)` on a git thread once the tenant and the pool have a slot for it.

        With `for_caller` (work that only matters to the request's client) it does not start when the client has
        gone meanwhile: `Unavailable` then, which nobody reads. Work that must happen anyway (removing a deleted
        repository's mirror) passes False. `not_started` is called when this gives up before the work started
        (cancelled while waiting, or the client gone): the work hands over what the caller holds, such as a lock,
        only once it runs.
        """
        if for_caller:
            watch_client()
        slots = self._slots = self._slots or asyncio.Semaphore(self.size)
        tenant = self._tenants.setdefault(str(tenant_id), asyncio.Semaphore(self.per_tenant))
        self.load.waiting_slot += 1
        try:
            await tenant.acquire()
        except BaseException:
            self.load.waiting_slot -= 1
            _call(not_started)
            raise
        try:
            await slots.acquire()
        except BaseException:
            self.load.waiting_slot -= 1
            tenant.release()
            _call(not_started)
            raise
        self.load.waiting_slot -= 1
        self.load.running += 1

        def release(done: asyncio.Future[T] | None = None) -> None:
            self.load.running -= 1
            slots.release()
            tenant.release()
            if done is not None and not done.cancelled():
                done.exception()  # retrieved: a cancelled request's failure is not logged as never retrieved

        try:
            if for_caller and client_gone():
                raise Unavailable("the client went away before its git work started; nothing was fetched")
            future = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(work, *args))
        except BaseException:
            release()
            _call(not_started)
            raise
        future.add_done_callback(release)
        return await asyncio.shield(future)

    def close(self) -> list[int]:
        """Kill the running git commands (answering their pids), start no more, and let the threads end."""
        killed = self.processes.kill_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return killed


def _call(callback: Callable[[], None] | None) -> None:
    if callback is not None:
        callback()
