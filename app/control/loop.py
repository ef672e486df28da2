"""Runs the control loop's jobs side by side as asyncio tasks, and stops them cleanly.

Each job runs one pass at a time; a pass that fails (Postgres or Redis away) is logged and the job goes on after
its interval, so the loop outlives any outage. An outage is logged once for the whole loop, when it begins and
when it ends (`outages`); any other failure once per job and kind, with its traceback. Several server replicas may
run the loop at once: every change a pass makes is conditional on the state it read, so a change made twice is
made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.control.events import EventConsumer
from app.control.outages import Outages, service_of
from app.control.outcomes import Outcomes
from app.control.reaper import Reaper
from app.control.reconciler import Reconciler
from app.metrics import ApiMetrics
from app.services.dispatch import Dispatcher
from app.services.workers import Workers
from app.settings import AppSettings

log = logging.getLogger("ahop.control")

STOP_GRACE = 10.0
"""Most seconds `stop` waits for the jobs: a server must shut down even if a job does not end."""
CONSUMER_BLOCK = 1.0
"""Most seconds the event consumer waits for new events in one read (shorter when the interval is)."""


@dataclass(frozen=True)
class Job:
    """One of the loop's jobs: `run_once` makes a pass; the next starts `interval` seconds later, or `retry_after`
    seconds after a pass that failed."""

    name: str
    run_once: Callable[[], Awaitable[int]]
    interval: float
    retry_after: float


class ControlLoop:
    def __init__(self, jobs: list[Job], on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        self.jobs = jobs
        self.on_stop = on_stop
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._outages = Outages()

    def start(self) -> None:
        """Start every job in the running event loop."""
        self._stopping = False
        self._tasks = [asyncio.create_task(self._repeat(job), name=f"ahop-{job.name}") for job in self.jobs]

    async def stop(self) -> None:
        """Cancel the jobs and wait for them to end."""
        if not self._tasks:
            return
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + STOP_GRACE
        for task in self._tasks:
            # A library may swallow one cancellation (asyncio.wait_for on Python 3.11 does, in a race with its
            # own timeout): cancel again until the job has ended.
            while not task.done() and asyncio.get_running_loop().time() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            if not task.done():
                log.warning("control loop job %s did not stop within %s s; leaving it", task.get_name(), STOP_GRACE)
                continue
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.on_stop is not None:
            try:
                await asyncio.wait_for(self.on_stop(), STOP_GRACE)
            except Exception as exc:
                log.warning("the control loop did not stop cleanly: %s", exc)

    async def _repeat(self, job: Job) -> None:
        failing: str | None = None
        while not self._stopping:
            try:
                await job.run_once()
            except Exception as exc:
                service = service_of(exc)
                if service is not None:
                    self._outages.failed(job.name, service, exc, job.retry_after)
                else:
                    problem = f"{type(exc).__name__}: {exc}"
                    if problem != failing:  # once per kind of failure, not once per pass
                        log.warning("control loop job %s failed: %s", job.name, problem, exc_info=True)
                    failing = problem
                await asyncio.sleep(job.retry_after)
                continue
            self._outages.worked(job.name)
            if failing is not None:
                log.info("control loop job %s works again", job.name)
                failing = None
            await asyncio.sleep(job.interval)


def build_control_loop(
    settings: AppSettings,
    session_factory: async_sessionmaker[AsyncSession],
    dispatcher: Dispatcher,
    workers: Workers,
    *,
    metrics: ApiMetrics | None = None,
) -> ControlLoop:
    """The event consumer, the reconciler and the reaper of one server process; the consumer counts into `metrics`."""
    outcomes = Outcomes(session_factory, dispatcher, settings.task_log_limit, metrics)
    consumer = EventConsumer(
        dispatcher.redis,
        session_factory,
        outcomes,
        consumer=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        block=min(CONSUMER_BLOCK, settings.control_interval),
        claim_after=settings.event_claim_after,
        metrics=metrics,
    )
    reconciler = Reconciler(session_factory, dispatcher, settings.requeue_after)
    reaper = Reaper(session_factory, workers, outcomes, settings.heartbeat_timeout, settings.lost_grace)
    interval = settings.control_interval
    return ControlLoop(
        [
            Job("events", consumer.run_once, 0.0, interval),  # it waits for new events itself
            Job("reconciler", reconciler.run_once, interval, interval),
            Job("reaper", reaper.run_once, interval, interval),
        ],
        on_stop=consumer.leave,
    )
