"""The runs of a `targets` task on its hosts, one row per host and attempt (`HostRun`).

An attempt's rows are written `pending` before its job goes out, one per host of the task's snapshot; the worker's
`host_started` and `host_finished` events move them on (`app.control.events`), and when the attempt ends without
a host's end (the worker was lost, the task was cancelled before it started) that host's run ends with it. Every
change names the attempt and the statuses it may change, so a duplicate or late event changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import HostRun, Task
from app.errors import InvalidInput

OPEN = ("pending", "running")
"""The statuses of a host's run that has not ended."""


async def open_host_runs(session: AsyncSession, task: Task) -> None:
    """A `pending` row for each host of the task's snapshot in its current attempt (rows already there stay)."""
    rows = [
        {
            "task_id": task.id,
            "attempt": task.attempt,
            "host_name": entry["name"],
            "host_id": entry.get("host_id"),
            "address": entry["address"],
        }
        for entry in task.targets or []
    ]
    if rows:
        await session.execute(insert(HostRun).values(rows).on_conflict_do_nothing())


async def host_started(session: AsyncSession, task_id: uuid.UUID, attempt: int, host: str, at: datetime) -> bool:
    """The host's run in `attempt` started at `at`; False when that changed nothing (not pending, or no such run)."""
    result = await session.execute(
        update(HostRun)
        .where(*_run(task_id, attempt, host), HostRun.status == "pending")
        .values(status="running", started_at=at)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def host_finished(
    session: AsyncSession,
    task_id: uuid.UUID,
    attempt: int,
    host: str,
    *,
    status: str,
    exit_code: int | None,
    error: str | None,
    digest: str | None,
    at: datetime,
) -> bool:
    """The host's run in `attempt` ended so; False when it had ended already (or there is no such run). A run whose
    start was never reported is taken to have started when it ended."""
    result = await session.execute(
        update(HostRun)
        .where(*_run(task_id, attempt, host), HostRun.status.in_(OPEN))
        .values(
            status=status,
            exit_code=exit_code,
            error=error,
            digest=digest,
            started_at=func.coalesce(HostRun.started_at, at),
            finished_at=func.greatest(func.coalesce(HostRun.started_at, at), at),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def end_open_runs(session: AsyncSession, task_id: uuid.UUID, attempt: int, status: str, error: str) -> int:
    """End the runs of `attempt` that have not ended, with `status` (`lost`, `cancelled`); how many there were."""
    result = await session.execute(
        update(HostRun)
        .where(HostRun.task_id == task_id, HostRun.attempt == attempt, HostRun.status.in_(OPEN))
        .values(status=status, error=error, finished_at=func.now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def host_runs(session: AsyncSession, task: Task, attempt: int | None) -> list[HostRun]:
    """The runs of `attempt` (default the task's current one), by host name; `InvalidInput` for an attempt the
    task never had."""
    number = task.attempt if attempt is None else attempt
    if not 1 <= number <= task.attempt:
        raise InvalidInput(
            f"task {task.id} has no attempt {number}", {"attempt": f"the task has attempts 1 to {task.attempt}"}
        )
    rows = await session.scalars(
        select(HostRun).where(HostRun.task_id == task.id, HostRun.attempt == number).order_by(HostRun.host_name)
    )
    return list(rows)


def _run(task_id: uuid.UUID, attempt: int, host: str) -> Sequence[Any]:
    return (HostRun.task_id == task_id, HostRun.attempt == attempt, HostRun.host_name == host)
