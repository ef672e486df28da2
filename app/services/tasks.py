"""Tasks as operators see them: create (validated, recorded, then enqueued), list, read, cancel, read the output.

A task's output is numbered over all its attempts: while an attempt runs its lines are in its own Redis log stream
(`worker.protocol.log_stream(task, attempt)`), numbered by the worker from 1; they are shown, and stored when the
attempt ends, shifted by the lines of the earlier attempts (`Task.log_lines` of an unfinished task, read in the same
snapshot as the attempt number). Stored lines are in Postgres.

Every line shown says which attempt wrote it: a live line carries its attempt, a stored line records it (0, unknown,
only for lines of a retried task stored before attempts were recorded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import String, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import (
    UNFINISHED_STATUSES,
    HostRun,
    Task,
    TaskLogLine,
    TaskStatus,
    TaskTemplate,
    TemplateVersion,
)
from app.errors import Conflict, InvalidInput, NotFound, Unavailable
from app.metrics import ApiMetrics
from app.services.dispatch import REDIS_ERRORS, Dispatcher
from app.services.host_runs import end_open_runs, host_runs
from app.services.target_snapshot import snapshot_targets
from app.services.task_params import masked, password_names, validate_params
from worker.protocol import LogLine, ProtocolError, legacy_log_stream, log_stream

UNFINISHED = tuple(status.value for status in UNFINISHED_STATUSES)
KEEPALIVE_SECONDS = 15.0
"""Silence after which a follower gets a keep-alive, so proxies keep an idle stream open."""
STREAM_BATCH = 1000


@dataclass(frozen=True)
class NewTask:
    """What an operator asks to run: a template (its current version unless `version` names one) with parameters."""

    template_id: int
    params: Mapping[str, Any]
    version: int | None = None
    timeout: int | None = None
    name: str = ""
    hosts: Sequence[int | str] = ()
    """Target hosts of the inventory, by id or name (the original system's `hosts`)."""
    labels: Sequence[str] = ()
    """Every host with one of these labels is a target."""


@dataclass(frozen=True)
class LogPage:
    """Output lines after a sequence number; `truncated` when the oldest lines of an attempt were dropped."""

    items: list[LogLine]
    truncated: bool
    status: str


@dataclass(frozen=True)
class Ending:
    """How a followed task ended."""

    status: str
    exit_code: int | None
    error: str | None


@dataclass(frozen=True)
class KeepAlive:
    """Nothing new for a while; the follower is still there."""


async def read_stream(redis: Redis, task_id: uuid.UUID | str, attempt: int, *, legacy: bool = False) -> list[LogLine]:
    """The lines in the log stream of one attempt, in order, each tagged with `attempt`; malformed entries and
    lines that say another attempt wrote them are left out. With `legacy`, an attempt whose own stream is empty is
    read from the task's shared stream of protocol version 1 (a job sent before the server was upgraded)."""
    lines = await _read_key(redis, log_stream(str(task_id), attempt), attempt)
    if not lines and legacy:
        lines = await _read_key(redis, legacy_log_stream(str(task_id)), attempt)
    return lines


async def _read_key(redis: Redis, key: str, attempt: int) -> list[LogLine]:
    lines: list[LogLine] = []
    start = "-"
    while True:
        batch = await redis.xrange(key, min=start, max="+", count=STREAM_BATCH)
        lines.extend(_lines(batch, attempt))
        if len(batch) < STREAM_BATCH:
            return lines
        start = "(" + _text(batch[-1][0])


def _lines(batch: list[tuple[Any, Any]], attempt: int) -> list[LogLine]:
    lines = []
    for _, fields in batch:
        try:
            line = LogLine.from_fields(fields)
        except ProtocolError:
            continue
        if line.attempt in (0, attempt):  # 0: a version 1 worker, which wrote only for the attempt it was sent
            lines.append(LogLine(seq=line.seq, stream=line.stream, line=line.line, attempt=attempt, host=line.host))
    return lines


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def shifted(line: LogLine, offset: int) -> LogLine:
    """An attempt's line numbered in the task's output, after the `offset` lines of the earlier attempts."""
    return dataclasses.replace(line, seq=line.seq + offset)


async def stored_lines(session: AsyncSession, task: Task, after: int) -> list[LogLine]:
    """The stored lines of `task` after `after`, each with its attempt (0 where it is not known: a line stored
    before attempts were recorded, of a task that had more than one)."""
    task_id, unrecorded = task.id, 1 if task.attempt == 1 else 0
    rows = await session.scalars(
        select(TaskLogLine).where(TaskLogLine.task_id == task_id, TaskLogLine.seq > after).order_by(TaskLogLine.seq)
    )
    return [
        LogLine(seq=row.seq, stream=row.stream, line=row.line, attempt=row.attempt or unrecorded, host=row.host)  # type: ignore[arg-type]
        for row in rows
    ]


_KEY_SHARE = {"read": True, "key_share": True}


class Tasks:
    def __init__(
        self,
        session: AsyncSession,
        dispatcher: Dispatcher,
        session_factory: async_sessionmaker[AsyncSession],
        follow_block: float = 1.0,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.session = session
        self.dispatcher = dispatcher
        self.session_factory = session_factory
        self.follow_block = follow_block
        self.metrics = metrics

    async def create(self, tenant_id: uuid.UUID, new: NewTask, created_by: uuid.UUID | None) -> Task:
        """Validate, record the task (`pending`), then enqueue it; with Redis down it stays `pending` for the
        reconciler. Nothing is written when the template, the version or a parameter is wrong."""
        async with self.session.begin():
            # Key-share locks on the template and the version until the task is recorded: a template deletion or
            # a retention pass waits for us and then sees the unfinished task (and so keeps what it runs).
            template = await self.session.scalar(
                select(TaskTemplate)
                .where(TaskTemplate.id == new.template_id, TaskTemplate.tenant_id == tenant_id)
                .with_for_update(read=True, key_share=True)
            )
            if template is None:
                raise NotFound(f"no template {new.template_id}")
            version = await self._version(template, new.version)
            targets = await self._targets(tenant_id, template, new)
            params = validate_params(version.parameters, new.params)
            secrets = {name: params[name] for name in password_names(version.parameters) if name in params}
            task = Task(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                template_id=template.id,
                template_code=template.code,
                version_id=version.id,
                version=version.version,
                digest=version.digest,
                pool=template.pool,
                name=new.name,
                params=masked(version.parameters, params),
                sealed_params=self._seal(secrets),
                status=TaskStatus.PENDING.value,
                attempt=1,
                max_attempts=template.max_attempts,
                retry_on=list(template.retry_on),
                timeout=new.timeout or template.timeout,
                execution=template.execution,
                targets=targets,
                require_sudo=template.require_sudo,
                forks=template.forks,
                max_fail_percentage=template.max_fail_percentage,
                created_by=created_by,
            )
            self.session.add(task)
        await self.dispatcher.dispatch(self.session, task.id)
        return await self.get(tenant_id, task.id)

    async def _targets(self, tenant_id: uuid.UUID, template: TaskTemplate, new: NewTask) -> list[dict[str, Any]] | None:
        """The inventory snapshot of a `targets` template's task (None for one that runs on the worker)."""
        if template.execution != "targets":
            if new.hosts or new.labels:
                given = "hosts" if new.hosts else "labels"
                raise InvalidInput(
                    f"template {template.code!r} runs on the worker: {given} name target hosts, which it does not "
                    "run on (a request's hosts are never dropped silently)",
                    {given: "not for a template that runs on the worker"},
                )
            return None
        if not (new.hosts or new.labels):
            raise InvalidInput(
                f"template {template.code!r} runs on targets: name its hosts (by id or name) or labels",
                {"hosts": "at least one host or label, for a template that runs on targets"},
            )
        if not self.dispatcher.seal.has_keys:
            raise InvalidInput(
                "this server has no AHOP_WORKER_SECRET_KEYS, so it cannot send the hosts' logins to the workers "
                "sealed; set the same AHOP_WORKER_SECRET_KEYS on the server and the workers",
                {"hosts": "running on targets needs AHOP_WORKER_SECRET_KEYS"},
            )
        return await snapshot_targets(self.session, tenant_id, new.hosts, new.labels)

    async def _version(self, template: TaskTemplate, number: int | None) -> TemplateVersion:
        if number is None:
            current = (
                await self.session.get(TemplateVersion, template.current_version_id, with_for_update=_KEY_SHARE)
                if template.current_version_id is not None
                else None
            )
            if current is None:
                raise Conflict(f"template {template.id} has no current version to run; import or sync it first")
            return current
        version = await self.session.scalar(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == template.id, TemplateVersion.version == number)
            .with_for_update(read=True, key_share=True)
        )
        if version is None:
            newest = await self.session.scalar(
                select(func.max(TemplateVersion.version)).where(TemplateVersion.template_id == template.id)
            )
            known = f"versions 1 to {newest}" if newest else "no versions"
            raise InvalidInput(
                f"template {template.id} has no version {number}",
                {"version": f"no such version; the template has {known}"},
            )
        return version

    def _seal(self, secrets: dict[str, Any]) -> bytes | None:
        if not secrets:
            return None
        if not self.dispatcher.seal.has_keys:
            raise InvalidInput(
                "this server has no AHOP_WORKER_SECRET_KEYS, so it cannot send password parameters to the workers "
                "sealed; leave them out or set the same AHOP_WORKER_SECRET_KEYS on the server and the workers",
                {f"params.{name}": "a password value needs AHOP_WORKER_SECRET_KEYS" for name in secrets},
            )
        try:
            return self.dispatcher.box.seal_json(secrets)
        except InvalidInput:
            raise InvalidInput(
                "this server has no AHOP_SECRET_KEYS, so it cannot keep password parameters; leave them out or "
                "configure AHOP_SECRET_KEYS on the server",
                {f"params.{name}": "a password value needs AHOP_SECRET_KEYS on the server" for name in secrets},
            ) from None

    async def get(self, tenant_id: uuid.UUID, task_id: uuid.UUID) -> Task:
        task = await self.session.scalar(
            select(Task)
            .where(Task.id == task_id, Task.tenant_id == tenant_id)
            .execution_options(populate_existing=True)
        )
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def page(
        self,
        tenant_id: uuid.UUID,
        *,
        status: str | None,
        template_id: int | None,
        page: int,
        page_size: int,
        id_prefix: str | None = None,
    ) -> tuple[list[Task], int]:
        """The tenant's tasks, newest first, and how many match in all; `id_prefix` (lowercase) keeps those whose
        id starts so."""
        conditions = [Task.tenant_id == tenant_id]
        if id_prefix:
            conditions.append(cast(Task.id, String).startswith(id_prefix, autoescape=True))
        if status:
            conditions.append(Task.status == status)
        if template_id is not None:
            conditions.append(Task.template_id == template_id)
        total = await self.session.scalar(select(func.count()).select_from(Task).where(*conditions)) or 0
        rows = await self.session.scalars(
            select(Task)
            .where(*conditions)
            .order_by(Task.created_at.desc(), Task.id.desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
            .execution_options(populate_existing=True)
        )
        return list(rows), total

    async def cancel(self, tenant_id: uuid.UUID, task_id: uuid.UUID) -> Task:
        """A task that has not started is cancelled at once and never starts; a running one is asked to stop (its
        worker kills it and reports `cancelled`). A finished task is a `Conflict`."""
        task = await self.get(tenant_id, task_id)
        await self.session.commit()  # end the read; commit keeps the loaded rows (rollback would expire them)
        if task.status not in UNFINISHED:
            raise Conflict(f"task {task_id} has already finished: {task.status}")
        try:
            # First the key, then the row: a worker that already holds the job must see the cancel.
            await self.dispatcher.request_cancel(task.id)
        except REDIS_ERRORS as exc:
            if task.status != TaskStatus.PENDING:
                raise Unavailable(f"Redis is unavailable, so the cancel cannot reach the workers: {exc}") from exc
        async with self.session.begin():
            waiting = await self._set(
                task.id,
                [TaskStatus.PENDING, TaskStatus.QUEUED],
                status=TaskStatus.CANCELLED.value,
                cancel_requested=True,
                error="cancelled before it started",
                finished_at=func.now(),
            )
            if waiting:
                ended = await end_open_runs(
                    self.session, task.id, task.attempt, "cancelled", "cancelled before it started"
                )
            running = waiting or await self._set(task.id, [TaskStatus.RUNNING], cancel_requested=True)
        if waiting and self.metrics is not None:
            self.metrics.host_runs_ended("cancelled", ended)
        cancelled = await self.get(tenant_id, task_id)
        await self.session.commit()
        if not running and cancelled.status != TaskStatus.CANCELLED:  # it finished in the meantime
            raise Conflict(f"task {task_id} has already finished: {cancelled.status}")
        # (cancelled by now: our key reached the worker, which stopped the script before we wrote the row)
        if waiting:
            await self.dispatcher.withdraw(cancelled)
        return cancelled

    async def hosts(self, tenant_id: uuid.UUID, task_id: uuid.UUID, attempt: int | None = None) -> list[HostRun]:
        """The task's runs on its hosts in `attempt` (default the current one); none for a task on the worker."""
        task = await self.get(tenant_id, task_id)
        return await host_runs(self.session, task, attempt)

    async def _set(self, task_id: uuid.UUID, statuses: list[TaskStatus], **values: Any) -> bool:
        result = await self.session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status.in_([status.value for status in statuses]))
            .values(**values, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def logs(self, tenant_id: uuid.UUID, task_id: uuid.UUID, after: int = 0) -> LogPage:
        """The task's output after line `after`: stored lines, and while an attempt runs, its live lines."""
        task = await self.get(tenant_id, task_id)
        redis = self.dispatcher.redis
        if task.status == TaskStatus.RUNNING:
            attempt, offset = task.attempt, task.log_lines
            try:
                live = await read_stream(redis, task.id, attempt)
            except REDIS_ERRORS as exc:
                raise Unavailable(f"Redis is unavailable, so a running task's output cannot be read: {exc}") from exc
            if not live:  # the attempt may have ended just now: its lines moved to Postgres
                task = await self.get(tenant_id, task_id)
            if task.status in UNFINISHED:
                lines = await stored_lines(self.session, task, after)
                # The attempt may have ended between the two reads: a line already stored is not shown twice.
                shown = lines[-1].seq if lines else after
                lines += [shifted(line, offset) for line in live if line.seq + offset > shown]
                truncated = task.log_truncated or bool(live and live[0].seq > 1)
                return LogPage(lines, truncated, task.status)
        return LogPage(await stored_lines(self.session, task, after), task.log_truncated, task.status)

    async def follow(self, task_id: uuid.UUID, after: int = 0) -> AsyncIterator[LogLine | Ending | KeepAlive]:
        """The task's output after line `after` as it comes, then how the task ended.

        Call `get` first (it checks the tenant); this holds no database connection while it waits.
        """
        last, attempt, position, quiet_since = after, 0, "0-0", time.monotonic()
        while True:
            async with self.session_factory() as session:
                # One snapshot for the row and the stored lines: the attempt, the lines before it (`log_lines`,
                # the shift of its live lines) and what is stored agree, whatever ends meanwhile.
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                task = await session.get(Task, task_id)
                if task is None:
                    return
                lines = await stored_lines(session, task, last)
            for line in lines:
                last, quiet_since = line.seq, time.monotonic()
                yield line
            if task.status not in UNFINISHED:
                yield Ending(task.status, task.exit_code, task.error)
                return
            if task.attempt != attempt:  # each attempt writes a stream of its own
                attempt, position = task.attempt, "0-0"
            position, live = await self._wait_for_lines(task_id, attempt, position)
            for line in live:
                if line.seq + task.log_lines > last:
                    line = shifted(line, task.log_lines)
                    last, quiet_since = line.seq, time.monotonic()
                    yield line
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield KeepAlive()

    async def _wait_for_lines(self, task_id: uuid.UUID, attempt: int, position: str) -> tuple[str, list[LogLine]]:
        """Lines of `attempt` after stream entry `position` (waiting up to `follow_block` seconds for the first)
        and the new position; no lines while Redis is away, so the caller simply asks again."""
        key = log_stream(str(task_id), attempt)
        try:
            answer = await self.dispatcher.redis.xread(
                {key: position}, count=STREAM_BATCH, block=max(1, round(self.follow_block * 1000))
            )
        except REDIS_ERRORS:
            await asyncio.sleep(self.follow_block)
            return position, []
        batch = [entry for _, entries in answer or [] for entry in entries]
        return (_text(batch[-1][0]) if batch else position), _lines(batch, attempt)
