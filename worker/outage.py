"""Riding out a Redis outage: the worker keeps its process and running scripts, and polls again with backoff.

arq's `Worker.main` ends its poll loop at the first Redis error (and `run` then exits the process once the running
jobs are done). `OutlastingWorker` turns such an error into a wait instead: the loop sleeps with a growing delay and
tries again, for as long as it takes, and picks up jobs as soon as Redis answers. The same holds at start: arq gives
up after a few connection attempts, but a worker started before Redis (a host that boots before the queue does)
waits for it. `RedisOutage` remembers whether
Redis is away, so the outage and the recovery are each logged once however many loops run into it.

A worker told to stop (SIGTERM) stops, Redis or not: what it would still tell Redis (a job's end, its leaving) is
tried for as long as a stop waits for running jobs (`AHOP_WORKER_SHUTDOWN_GRACE`) and then given up. That leaves
Redis as a killed worker leaves it: the job's in-progress mark expires and the server's reaper and reconciler take
over, as they do for a worker that died.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, create_pool
from arq.worker import Worker
from redis.exceptions import AuthenticationError, RedisError, ResponseError

log = logging.getLogger("ahop.worker")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0


class RedisOutage:
    """Whether Redis answered the last time it was asked, and how long to wait before asking again.

    Any loop that talks to Redis reports a failure with `noticed`; only the poll loop reports success with
    `recovered` (it is the one that must work for jobs to flow), so a heartbeat on a connection that happened to
    work cannot end an outage the poll loop still sees.
    """

    def __init__(self, where: str, *, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.where = where
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delay = first_delay
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def noticed(self, exc: BaseException) -> None:
        """Redis failed a request: log the outage if it is news."""
        if self._since is None:
            self._since = time.monotonic()
            log.warning("Redis at %s is unavailable: %s; retrying", self.where, exc)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: doubling from the first delay up to the maximum."""
        delay = self._delay
        self._delay = min(self._delay * 2, self._max_delay)
        return delay

    def recovered(self) -> None:
        """Redis answered: log the recovery if it was away, and start the backoff afresh."""
        self._delay = self._first_delay
        if self._since is not None:
            away = time.monotonic() - self._since
            log.info("Redis at %s is available again after %.1f s; taking jobs", self.where, away)
            self._since = None


class OutlastingWorker(Worker):
    """An arq `Worker` whose poll loop survives Redis outages and whose job results wait for Redis to return."""

    def __init__(self, *args: Any, outage: RedisOutage, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = outage

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await self._first_pool()
        await super().main()

    async def _first_pool(self) -> ArqRedis:
        """The connection pool, once Redis answers: one attempt at a time (arq's own retries would each log a
        warning and then give up), the outage logged once."""
        assert self.redis_settings is not None  # build_worker always gives them
        once = dataclasses.replace(self.redis_settings, conn_retries=0)
        while True:
            try:
                pool = await create_pool(
                    once,
                    job_serializer=self.job_serializer,
                    job_deserializer=self.job_deserializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
            except (AuthenticationError, ResponseError, ssl.SSLError):
                raise  # a wrong password, database index or TLS setup: waiting would not mend it
            except (RedisError, OSError) as exc:
                self.outage.noticed(exc)
                await asyncio.sleep(self.outage.next_delay())
            else:
                self.outage.recovered()
                return pool

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            self.outage.noticed(exc)
            await asyncio.sleep(self.outage.next_delay())
        else:
            self.outage.recovered()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        try:
            await super().start_jobs(job_ids)
        except (RedisError, OSError):
            # arq counts a job (and takes a semaphore slot) before its Redis round trip and gives them back only
            # when that answers: undo it here, or every outage would leave the worker one job slot short.
            self.job_counter -= 1
            self.sem.release()
            raise

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        finish = super().finish_job
        await self._until_redis_takes(lambda: finish(*args, **kwargs))

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        finish = super().finish_failed_job
        await self._until_redis_takes(lambda: finish(*args, **kwargs))

    async def _until_redis_takes(self, send: Callable[[], Awaitable[None]]) -> None:
        """A finished job's bookkeeping (its result, its removal from the queue) waits out an outage: dropped,
        the job would stay marked in progress, and arq would deliver it again once that mark expires. Once the
        worker is stopping, it waits no longer than a stop waits for jobs."""
        delay = FIRST_DELAY
        give_up_at: float | None = None
        while True:
            try:
                await send()
                return
            except (RedisError, OSError) as exc:
                self.outage.noticed(exc)
                if not self.allow_pick_jobs:  # stopping
                    now = time.monotonic()
                    give_up_at = give_up_at or now + self._job_completion_wait
                    if now >= give_up_at:
                        log.warning("stopping without recording a job's end: Redis is still away (%s)", exc)
                        return
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)

    async def close(self) -> None:
        """arq's close, whose first request (removing the health-check key) fails while Redis is away and would
        end the stop there, before `on_shutdown`: the rest of the stop then runs without Redis."""
        try:
            await super().close()
        except (RedisError, OSError) as exc:
            self.outage.noticed(exc)
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
