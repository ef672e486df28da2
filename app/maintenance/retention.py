"""Retention: versions beyond `AHOP_KEEP_VERSIONS`, and finished tasks and maintenance reports past their days.

Each step works in short transactions so that a large backlog never holds locks for long. A dry run counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Delete, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import Select

from app.db.models import MaintenanceRun, RunStatus, Task, TemplateVersion
from app.maintenance.references import unretained_versions

TASK_BATCH = 1000
"""Finished tasks deleted per transaction (their output lines go with them)."""
VERSION_BATCH = 500
"""Versions locked and deleted per transaction."""


@dataclass(frozen=True)
class Pruned:
    versions: int
    tasks: int
    runs: int


async def prune(
    sessions: async_sessionmaker[AsyncSession], *, keep: int, retention: timedelta, dry_run: bool
) -> Pruned:
    """Apply retention (or, with `dry_run`, count what it would remove)."""
    async with sessions() as session:
        if dry_run:
            return Pruned(
                versions=await _count(session, _unretained(keep)),
                tasks=await _count(session, select(Task.id).where(Task.finished_at < _cutoff(retention))),
                runs=await _count(session, _old_runs(retention)),
            )
        versions = await _prune_versions(session, keep)
        tasks = await _prune_tasks(session, retention)
        async with session.begin():
            runs = await _deleted(session, delete(MaintenanceRun).where(MaintenanceRun.id.in_(_old_runs(retention))))
        return Pruned(versions=versions, tasks=tasks, runs=runs)


async def _deleted(session: AsyncSession, statement: Delete) -> int:
    result = cast("CursorResult[Any]", await session.execute(statement))
    return result.rowcount


def _cutoff(retention: timedelta) -> ColumnElement[datetime]:
    return func.now() - retention


def _unretained(keep: int) -> Select[int]:
    return select(TemplateVersion.id).where(TemplateVersion.id.in_(unretained_versions(keep)))


def _old_runs(retention: timedelta) -> Select[uuid.UUID]:
    return select(MaintenanceRun.id).where(
        MaintenanceRun.status != RunStatus.RUNNING.value, MaintenanceRun.finished_at < _cutoff(retention)
    )


async def _count(session: AsyncSession, query: Select[Any]) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)


async def _prune_versions(session: AsyncSession, keep: int) -> int:
    """In batches by id: lock versions that are not retained (skipping any a task is locking to run), then delete
    those that are still not retained: the second statement sees tasks that committed while we waited."""
    pruned, after = 0, 0
    while True:
        async with session.begin():
            locked = list(
                await session.scalars(
                    _unretained(keep)
                    .where(TemplateVersion.id > after)
                    .order_by(TemplateVersion.id)
                    .limit(VERSION_BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            if not locked:
                return pruned
            after = locked[-1]
            pruned += await _deleted(
                session,
                delete(TemplateVersion).where(
                    TemplateVersion.id.in_(locked), TemplateVersion.id.in_(unretained_versions(keep))
                ),
            )


async def _prune_tasks(session: AsyncSession, retention: timedelta) -> int:
    pruned = 0
    while True:
        async with session.begin():
            batch = select(Task.id).where(Task.finished_at < _cutoff(retention)).limit(TASK_BATCH)
            count = await _deleted(session, delete(Task).where(Task.id.in_(batch)))
        pruned += count
        if count < TASK_BATCH:
            return pruned
