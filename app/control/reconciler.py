"""The reconciler: what the database says is waiting reaches Redis (DESIGN §5).

- `pending` tasks (Redis was down when they were created, or a retry was not sent yet) are enqueued, oldest first.
- `queued` tasks whose arq job vanished from Redis (Redis lost its data, or the job expired unstarted) are enqueued
  again once they have been queued for `requeue_after` seconds; they never started, so nothing runs twice. A job
  that a worker took, or finished, is not "vanished": it is in progress or has a result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from arq.jobs import Job, JobStatus
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Task, TaskStatus
from app.services.dispatch import Dispatcher
from worker.protocol import job_id, queue_name

log = logging.getLogger("ahop.control")

BATCH = 200


@dataclass(eq=False)
class Reconciler:
    """Sends again the jobs of queued tasks that Redis lost."""

    session_factory: async_sessionmaker[AsyncSession]
    dispatcher: Dispatcher
    requeue_after: float

    async def run_once(self) -> int:
        """One pass; how many tasks were enqueued."""
        redis = self.dispatcher.redis
        cutoff = datetime.now(UTC) - timedelta(seconds=self.requeue_after)
        async with self.session_factory() as session:
            pending = list(
                await session.scalars(
                    select(Task.id)
                    .where(Task.status == TaskStatus.PENDING.value)
                    .order_by(Task.created_at, Task.id)
                    .limit(BATCH)
                )
            )
            queued = (
                await session.execute(
                    select(Task.id, Task.attempt, Task.pool)
                    .where(Task.status == TaskStatus.QUEUED.value, Task.queued_at < cutoff)
                    .order_by(Task.queued_at)
                    .limit(BATCH)
                )
            ).all()
        if not pending and not queued:
            return 0
        await redis.ping()  # Redis away: one error for the pass, not one per task
        vanished = []
        for task_id, attempt, pool in queued:
            job = Job(job_id(str(task_id), attempt), redis, _queue_name=queue_name(pool))
            if await job.status() == JobStatus.not_found:
                log.warning(
                    "task %s attempt %d is queued but its job is gone from Redis; enqueueing it again", task_id, attempt
                )
                vanished.append(task_id)
        sent = 0
        for task_id in [*pending, *vanished]:
            async with self.session_factory() as session:
                sent += await self.dispatcher.dispatch(session, task_id)
        return sent
