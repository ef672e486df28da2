"""How an attempt ended, recorded once: its output moved from Redis to Postgres, then a final status or, when the
task's retry policy says so, its next attempt.

The task row is locked while the outcome is recorded, and only an unfinished task's current attempt takes one: a
duplicate event, an old attempt's event or a task that another server replica finished first changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Task, TaskLogLine, TaskStatus
from app.metrics import ApiMetrics
from app.services.dispatch import Dispatcher
from app.services.host_runs import end_open_runs
from app.services.tasks import UNFINISHED, read_stream
from worker.protocol import LogLine, legacy_log_stream, log_stream

log = logging.getLogger("ahop.control")

INSERT_BATCH = 1000


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt, as a worker reported it or as the reaper found it."""

    status: str
    exit_code: int | None = None
    error: str | None = None
    log_lines: int = 0
    """Lines the attempt wrote in all, as its worker counted them (0 when unknown)."""
    log_truncated: bool = False
    worker: str | None = None
    at: datetime | None = None


@dataclass(eq=False)
class Outcomes:
    """Records outcomes for the event consumer and the reaper."""

    session_factory: async_sessionmaker[AsyncSession]
    dispatcher: Dispatcher
    log_limit: int
    metrics: ApiMetrics | None = None
    """Counts the host runs that end with their attempt."""

    async def record(self, task_id: uuid.UUID, attempt: int, outcome: Outcome) -> str | None:
        """Record `outcome` for `attempt` of the task: the status it ends in (`pending` for a retry), or None when
        the outcome was not the task's to take (it changes nothing)."""
        redis = self.dispatcher.redis
        async with self.session_factory() as session:
            async with session.begin():
                task = await session.scalar(
                    select(Task).where(Task.id == task_id).with_for_update().execution_options(populate_existing=True)
                )
                if task is None or task.attempt != attempt:
                    if task is not None and attempt < task.attempt:
                        # An attempt given up on (lost) that ran on: what it wrote since is not the task's output.
                        await redis.delete(log_stream(str(task_id), attempt))
                    return None
                lines = await read_stream(redis, task_id, attempt, legacy=True)
                ended = ("", 0)  # (status, how many) of the host runs that end with the attempt
                if task.status not in UNFINISHED:
                    if task.started_at is not None:
                        return None
                    # Cancelled before it started, yet a worker had already taken it: keep what the script wrote.
                    await self._store(session, task, lines, outcome)
                    status = None
                else:
                    await self._store(session, task, lines, outcome)
                    status = self._conclude(task, outcome)
                    ended = await self._end_host_runs(session, task_id, attempt, outcome)
            if self.metrics is not None:  # counted once committed
                self.metrics.host_runs_ended(ended[0], ended[1])
            await redis.delete(log_stream(str(task_id), attempt), legacy_log_stream(str(task_id)))
            if status == TaskStatus.PENDING:
                log.info("task %s: attempt %d %s; attempt %d follows", task_id, attempt, outcome.status, attempt + 1)
                await self.dispatcher.dispatch(session, task_id)
        return status

    async def _end_host_runs(
        self, session: AsyncSession, task_id: uuid.UUID, attempt: int, outcome: Outcome
    ) -> tuple[str, int]:
        """The attempt's host runs that have not ended end with it: `lost` with a lost worker, else `cancelled`
        (the worker ended the attempt before it reported the host's end). Their status and how many."""
        if outcome.status == TaskStatus.LOST:
            status, error = "lost", outcome.error or "the worker that ran it was lost"
        else:
            status, error = "cancelled", f"the attempt ended ({outcome.status}) before this host's run did"
        return status, await end_open_runs(session, task_id, attempt, status, error)

    async def _store(self, session: AsyncSession, task: Task, lines: list[LogLine], outcome: Outcome) -> None:
        """Keep the attempt's newest lines, numbered after the lines of the task's earlier attempts."""
        kept = lines[-self.log_limit :]
        offset = task.log_lines
        for start in range(0, len(kept), INSERT_BATCH):
            rows = [
                {
                    "task_id": task.id,
                    "seq": line.seq + offset,
                    "stream": line.stream,
                    "line": line.line,
                    "attempt": task.attempt,
                    "host": line.host,
                }
                for line in kept[start : start + INSERT_BATCH]
            ]
            await session.execute(insert(TaskLogLine).values(rows).on_conflict_do_nothing())
        written = max(outcome.log_lines, lines[-1].seq if lines else 0)
        task.log_lines = offset + written
        task.log_truncated = task.log_truncated or outcome.log_truncated or written > len(kept)
        task.updated_at = datetime.now(UTC)

    def _conclude(self, task: Task, outcome: Outcome) -> str:
        if outcome.status in task.retry_on and task.attempt < task.max_attempts and not task.cancel_requested:
            task.attempt += 1
            task.status = TaskStatus.PENDING.value
            task.exit_code = task.error = task.worker_id = None
            task.queued_at = task.started_at = None
            return task.status
        task.status = outcome.status
        task.exit_code = outcome.exit_code
        task.error = outcome.error
        task.worker_id = task.worker_id or outcome.worker
        finished_at = outcome.at or datetime.now(UTC)
        # The end is the worker's clock (or ours, for a lost task): never before the start the database recorded.
        task.finished_at = max(finished_at, task.started_at) if task.started_at is not None else finished_at
        return task.status
