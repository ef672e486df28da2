"""The reaper: a running task whose worker stopped heartbeating is `lost` (then the retry policy decides).

A task counts as lost when it started more than `heartbeat_timeout` seconds ago and its worker's latest heartbeat
is older than that, or absent, or, sent after the task started, does not list the task among those it runs (a new
process of the worker, or one that lost track of it without a word). Ages are measured with the server's clock,
so server and worker clocks should agree within a second or two. Lost is final by default: a worker that died took
its scripts with it (`worker.supervisor`), long before the heartbeat timeout, but a worker alive and cut off from
Redis still runs them, and a script may not be safe to run twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.control.outcomes import Outcome, Outcomes
from app.db.models import Task, TaskStatus
from app.services.workers import Workers, WorkerState

log = logging.getLogger("ahop.control")


def why_lost(
    task_id: uuid.UUID, worker_id: str | None, started_at: datetime, state: WorkerState | None, heartbeat_timeout: float
) -> str | None:
    """Why a running task is lost, or None while its worker is alive and runs it."""
    if worker_id is None:
        return "no worker is known to run it"
    if state is None:
        return f"worker {worker_id} stopped heartbeating: it has no heartbeat on record (it left or was never seen)"
    seen = state.last_seen.astimezone(UTC).isoformat(timespec="seconds")
    if not state.live:
        return (
            f"worker {worker_id} stopped heartbeating: last seen at {seen}, {state.age_seconds:.0f} s ago "
            f"(the limit is {heartbeat_timeout:g} s)"
        )
    if str(task_id) in state.heartbeat.running:
        return None
    if state.started_at > started_at:
        restarted = state.started_at.astimezone(UTC).isoformat(timespec="seconds")
        return f"worker {worker_id} restarted at {restarted}, after the task started, and does not run it"
    if state.last_seen > started_at:  # a heartbeat sent after the start that leaves the task out
        return f"worker {worker_id} is alive but no longer runs it (its heartbeat at {seen} does not list it)"
    return None


@dataclass(eq=False)
class Reaper:
    """Marks a task lost only after it has looked lost in every pass for `grace` seconds of this reaper's own
    observation. Heartbeats that are missing because Redis lost its data or was away (workers
    beat again within their interval once it is back), or because a worker stopped cleanly just after reporting
    (its `finished` event still on its way to the consumer), therefore never make a healthy task lost."""

    session_factory: async_sessionmaker[AsyncSession]
    workers: Workers
    outcomes: Outcomes
    heartbeat_timeout: float
    grace: float
    _suspects: dict[tuple[uuid.UUID, int], float] = field(default_factory=dict, init=False, repr=False)
    """(task, attempt) → when this reaper first saw it look lost (monotonic seconds)."""

    async def run_once(self) -> int:
        """One pass over the running tasks that started long enough ago; how many were found lost."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.heartbeat_timeout)
        async with self.session_factory() as session:
            rows = (
                await session.execute(
                    select(Task.id, Task.attempt, Task.worker_id, Task.started_at, Task.pool)
                    .where(Task.status == TaskStatus.RUNNING.value, Task.started_at < cutoff)
                    .order_by(Task.started_at)
                )
            ).all()
        if not rows:
            self._suspects.clear()
            return 0
        states = {state.heartbeat.id: state for state in await self.workers.known()}
        now = time.monotonic()
        suspects: dict[tuple[uuid.UUID, int], float] = {}
        lost = 0
        for task_id, attempt, worker_id, started_at, pool in rows:
            if started_at is None:  # not possible for a running task; the query excludes it anyway
                continue
            state = states.get(worker_id) if worker_id else None
            reason = why_lost(task_id, worker_id, started_at, state, self.heartbeat_timeout)
            if reason is None:
                continue
            first_seen = suspects[(task_id, attempt)] = self._suspects.get((task_id, attempt), now)
            if now - first_seen < self.grace:
                continue
            recorded = await self.outcomes.record(
                task_id, attempt, Outcome(status=TaskStatus.LOST.value, error=reason, worker=worker_id)
            )
            if recorded is not None:
                lost += 1
                log.warning("task %s attempt %d lost: %s", task_id, attempt, reason)
                await self.outcomes.dispatcher.withdraw_job(task_id, attempt, pool)
        self._suspects = suspects
        return lost
