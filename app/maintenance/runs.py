"""Maintenance runs: one row per GC or verify run, its progress while it runs and its report when it ends; and the
lock that lets one GC run at a time.

A run's row is written by whoever runs it (a command, or a server replica for the API) every few seconds; a row
still `running` whose writer fell silent for `ABANDONED_AFTER` is reported as failed, so a crashed process never
leaves a run that looks alive forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import MaintenanceRun, RunKind, RunStatus
from app.errors import Conflict, NotFound

GC_LOCK_KEY = 0x61686F70_6763
"""The session-level advisory lock held by the one GC allowed at a time ("ahop" "gc")."""
ABANDONED_AFTER = timedelta(minutes=2)
FLUSH_INTERVAL = 2.0
"""Seconds between two writes of a run's progress to its row (also its sign of life)."""

log = logging.getLogger("ahop.maintenance")


class AlreadyRunning(Conflict):
    """Another GC holds the lock."""


class GcLock:
    """The GC lock, held on a connection of its own for as long as the run lasts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._connection: AsyncConnection | None = None

    async def acquire(self, sessions: async_sessionmaker[AsyncSession], *, wait: bool) -> None:
        connection = await self.engine.connect()
        try:
            if wait:
                await connection.execute(select(func.pg_advisory_lock(GC_LOCK_KEY)))
            elif not await connection.scalar(select(func.pg_try_advisory_lock(GC_LOCK_KEY))):
                raise AlreadyRunning(await _running_message(sessions))
            await connection.commit()  # the lock belongs to the session: no transaction stays open
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.execute(select(func.pg_advisory_unlock(GC_LOCK_KEY)))
            await connection.commit()
        except (DBAPIError, OSError):
            await connection.invalidate()  # a broken connection: its session, and the lock, are gone anyway
        finally:
            await connection.close()


async def _running_message(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions() as session:
        running = await session.scalar(
            select(MaintenanceRun)
            .where(MaintenanceRun.kind == RunKind.GC.value, MaintenanceRun.status == RunStatus.RUNNING.value)
            .order_by(MaintenanceRun.started_at.desc())
            .limit(1)
        )
    if running is None:
        return "a GC is already running; try again when it ends, or wait for it (--wait)"
    return (
        f"a GC is already running (run {running.id}, started {running.started_at.isoformat()} by "
        f"{running.started_by or 'unknown'}); try again when it ends, or wait for it (--wait)"
    )


async def create_run(
    sessions: async_sessionmaker[AsyncSession], kind: RunKind, options: dict[str, Any], started_by: str
) -> uuid.UUID:
    async with sessions() as session, session.begin():
        run = MaintenanceRun(id=uuid.uuid4(), kind=kind.value, options=options, started_by=started_by)
        session.add(run)
    return run.id


async def get_run(session: AsyncSession, run_id: uuid.UUID) -> MaintenanceRun:
    """The run; a `running` row whose writer fell silent is marked failed first."""
    async with session.begin():
        await _mark_abandoned(session, MaintenanceRun.id == run_id)
        run = await session.get(MaintenanceRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"no maintenance run {run_id}")
    return run


async def list_runs(
    session: AsyncSession, kind: RunKind | None, offset: int, limit: int
) -> tuple[int, list[MaintenanceRun]]:
    """(how many runs there are, a page of them newest first); abandoned ones are marked failed first."""
    conditions = [MaintenanceRun.kind == kind.value] if kind is not None else []
    async with session.begin():
        await _mark_abandoned(session, *conditions)
        total = await session.scalar(select(func.count()).select_from(MaintenanceRun).where(*conditions))
        rows = await session.scalars(
            select(MaintenanceRun)
            .where(*conditions)
            .order_by(MaintenanceRun.started_at.desc())
            .offset(offset)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return int(total or 0), list(rows)


async def _mark_abandoned(session: AsyncSession, *conditions: ColumnElement[bool]) -> None:
    await session.execute(
        update(MaintenanceRun)
        .where(
            *conditions,
            MaintenanceRun.status == RunStatus.RUNNING.value,
            MaintenanceRun.updated_at < func.now() - ABANDONED_AFTER,
        )
        .values(
            status=RunStatus.FAILED.value,
            finished_at=func.now(),
            error="the process running it stopped reporting (it was stopped or crashed); start a new run",
        )
    )


@dataclass
class RunRecorder:
    """Progress that lands on the run's row: the phase, items and bytes done, written every FLUSH_INTERVAL."""

    sessions: async_sessionmaker[AsyncSession]
    run_id: uuid.UUID
    interval: float = FLUSH_INTERVAL
    state: dict[str, Any] = field(default_factory=lambda: {"phase": "starting", "total": None, "done": 0, "bytes": 0})
    _task: asyncio.Task[None] | None = None

    def phase(self, name: str, total: int | None = None) -> None:
        self.state = {"phase": name, "total": total, "done": 0, "bytes": 0}

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self.state["done"] += items
        self.state["bytes"] += nbytes

    async def __aenter__(self) -> RunRecorder:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self.sessions() as session, session.begin():
                    await session.execute(
                        update(MaintenanceRun)
                        .where(MaintenanceRun.id == self.run_id, MaintenanceRun.status == RunStatus.RUNNING.value)
                        .values(report={"progress": dict(self.state)}, updated_at=func.now())
                    )
            except (DBAPIError, OSError) as exc:  # the run goes on; its row catches up at the next beat
                log.warning("could not record the progress of run %s: %s", self.run_id, exc)

    async def finish(self, status: RunStatus, report: dict[str, Any], error: str | None = None) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(MaintenanceRun)
                .where(MaintenanceRun.id == self.run_id)
                .values(status=status.value, report=report, error=error, finished_at=func.now(), updated_at=func.now())
            )
