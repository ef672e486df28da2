"""A worker's heartbeat: who it is, what it runs, what its store holds; and its inbox of prefetch requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.errors import StorageError
from worker.outage import RedisOutage
from worker.protocol import (
    WORKERS_KEY,
    BlobRef,
    Heartbeat,
    ProtocolError,
    worker_digests_key,
    worker_inbox_key,
)
from worker.reporting import now_iso
from worker.store import LocalStore

log = logging.getLogger("ahop.worker")

INBOX_WAIT = 1
"""Seconds one BLPOP on the inbox waits: bounds how long a stopping worker takes to notice."""


def package_version() -> str:
    try:
        return version("ahop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@dataclass(eq=False)
class Presence:
    """Publishes heartbeats and the store's digests; serves the worker's inbox."""

    redis: Redis
    store: LocalStore
    worker_id: str
    pools: list[str]
    running: Callable[[], list[str]]
    interval: float
    outage: RedisOutage = field(kw_only=True)
    started_at: str = field(default_factory=now_iso, init=False)
    version: str = field(default_factory=package_version, init=False)
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahop-heartbeat"),
        init=False,
        repr=False,
    )

    async def beat(self) -> None:
        """Write one heartbeat and replace the published set of digests."""
        loop = asyncio.get_running_loop()
        # A thread of its own: jobs waiting in the shared pool (for another job's download) must not delay a beat,
        # or the server would count this worker dead and its tasks lost.
        stats = await loop.run_in_executor(self._thread, self.store.stats)
        digests = await loop.run_in_executor(self._thread, self.store.digests)
        heartbeat = Heartbeat(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pools=self.pools,
            running=self.running(),
            cache_bytes=stats.bytes,
            cache_entries=stats.entries,
            downloads=self.store.downloads,
            version=self.version,
            started_at=self.started_at,
            at=now_iso(),
        )
        key = worker_digests_key(self.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(WORKERS_KEY, self.worker_id, heartbeat.to_json())
            pipe.delete(key)
            if digests:
                pipe.sadd(key, *(digest.hex for digest in digests))
                pipe.expire(key, max(60, int(self.interval * 10)))
            await pipe.execute()

    async def heartbeats(self) -> None:
        """Beat every `interval` seconds until cancelled; a Redis outage costs beats, not the loop (and is logged
        once, by `outage`)."""
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                self.outage.noticed(exc)
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.interval)

    async def inbox(self) -> None:
        """Prefetch what the server asks for (one blob per message), then publish the new digest at once."""
        key = worker_inbox_key(self.worker_id)
        while True:
            try:
                item = await self.redis.blpop([key], timeout=INBOX_WAIT)  # type: ignore[misc]  # redis-py's sync/async union
            except (RedisError, OSError) as exc:
                self.outage.noticed(exc)
                await asyncio.sleep(self.interval)
                continue
            if item is None:
                continue
            try:
                await self._prefetch(item[1])
            except Exception:  # one bad request must not stop the inbox
                log.exception("prefetch failed")

    async def _prefetch(self, raw: bytes) -> None:
        try:
            blob = BlobRef.from_wire(json.loads(raw))
        except (ValueError, TypeError, ProtocolError) as exc:
            log.warning("ignored a malformed inbox message: %s", exc)
            return
        try:
            fetched = await asyncio.to_thread(self.store.prefetch, blob)
        except StorageError as exc:
            log.error("prefetch of %s failed: %s", blob.digest, exc)
            return
        log.info("prefetch of %s: %s", blob.digest, "downloaded" if fetched else "already held")
        with contextlib.suppress(RedisError, OSError):  # the next regular heartbeat publishes it otherwise
            await self.beat()

    async def leave(self) -> None:
        """Remove this worker's heartbeat and digests: a clean stop is not a dead worker."""
        self._thread.shutdown(wait=False)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(WORKERS_KEY, self.worker_id)
            pipe.delete(worker_digests_key(self.worker_id), worker_inbox_key(self.worker_id))
            await pipe.execute()
