"""Sending task attempts to the workers (DESIGN §5): the arq job of an attempt, its cancel key, its withdrawal.

An attempt is enqueued under the deterministic job id `worker.protocol.job_id(task, attempt)`, so sending it twice
(two server replicas, a reconciler racing the API) queues it once, and a worker claims each attempt once. The row
becomes `queued` only after the enqueue succeeded, by a conditional UPDATE: whoever loses a race changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, TargetCredential, Task, TaskStatus, TemplateVersion
from app.errors import InvalidInput
from app.services.credentials import CredentialBox
from app.services.host_runs import open_host_runs
from app.services.target_credentials import Secrets
from worker.job_secrets import JobSecrets, LoginSecret, SealError, WorkerSeal
from worker.protocol import (
    RUN_JOB,
    BlobRef,
    JobHost,
    TargetPlan,
    TaskJob,
    cancel_key,
    deserialize,
    job_id,
    queue_name,
    serialize,
)

JOB_EXPIRES = timedelta(days=30)
"""How long a job may wait for a worker of its pool (arq's default, a day, would strand a task)."""

log = logging.getLogger("ahop.dispatch")

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call raises when Redis is down, restarting or too slow."""
CANCEL_TTL = 86_400
"""Seconds a cancel key lives: long past any worker noticing it, short enough not to pile up."""
SENDABLE = (TaskStatus.PENDING.value, TaskStatus.QUEUED.value)


class Undeliverable(Exception):
    """A task whose job cannot be built: its version or content is gone, or its secrets cannot be opened."""


def connect(redis_url: str, timeout: float) -> ArqRedis:
    """The Redis client of tasks: arq's enqueue with our JSON job encoding, every command bounded by `timeout`."""
    pool = ConnectionPool.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    redis = ArqRedis(pool, job_serializer=serialize, job_deserializer=deserialize)
    redis.auto_close_connection_pool = True  # the pool is ours alone: closing the client closes it
    return redis


def target_plan(task: Task) -> TargetPlan | None:
    """The hosts of a `targets` task's snapshot as its job carries them, each logging in with its credential's
    login (`JobSecrets.logins`, by the credential's id)."""
    if task.execution != "targets" or task.targets is None:
        return None
    hosts = [
        JobHost(
            host_id=entry["host_id"],
            name=entry["name"],
            address=entry["address"],
            port=entry["port"],
            username=entry["user"],
            host_keys=list(entry["host_keys"]),
            login=str(entry["credential_id"]),
            variables=dict(entry.get("variables") or {}),
        )
        for entry in task.targets
    ]
    return TargetPlan(
        hosts=hosts, forks=task.forks, max_fail_percentage=task.max_fail_percentage, require_sudo=task.require_sudo
    )


def login_of(credential: TargetCredential, box: CredentialBox) -> LoginSecret:
    """How a worker logs in with a stored credential, opened with the server's keys."""
    opened = Secrets.of(box.open_json(credential.sealed))
    is_key = opened.kind == "ssh_key"
    return LoginSecret(
        private_key=opened.secret if is_key else None,
        passphrase=opened.passphrase,
        password=None if is_key else opened.secret,
        become_password=opened.become_password,
    )


async def credentials_of(session: AsyncSession, task: Task) -> dict[int, TargetCredential]:
    """The credentials that the hosts of a `targets` task's snapshot use, those that still exist, by id."""
    wanted = sorted({int(entry["credential_id"]) for entry in task.targets or []})
    if not wanted:
        return {}
    rows = await session.scalars(
        select(TargetCredential).where(TargetCredential.tenant_id == task.tenant_id, TargetCredential.id.in_(wanted))
    )
    return {row.id: row for row in rows}


def open_logins(task: Task, found: dict[int, TargetCredential], box: CredentialBox) -> dict[str, LoginSecret]:
    """The logins of the credentials a `targets` task's hosts use (`found`: `credentials_of`), opened with the
    server's keys; `Undeliverable` naming each host whose credential is gone."""
    entries = task.targets or []
    if gone := [entry for entry in entries if int(entry["credential_id"]) not in found]:
        named = ", ".join(f"host {entry['name']!r} (credential {entry['credential_id']})" for entry in gone)
        raise Undeliverable(f"the credential of {named} no longer exists; give the hosts a credential and run it again")
    return {str(ident): login_of(row, box) for ident, row in found.items()}


def build_job(
    task: Task,
    version: TemplateVersion | None,
    blob: Blob | None,
    secrets: dict[str, Any],
    log_limit: int,
    seal: WorkerSeal,
    logins: dict[str, LoginSecret] | None = None,
) -> TaskJob:
    """The job of the task's current attempt. Its password values (`secrets`) and its hosts' `logins` go sealed
    for the workers; `params` keeps their names, masked as the task row has them, so that the order of the
    arguments holds."""
    if version is None:
        raise Undeliverable(f"version {task.version} of template {task.template_code!r} no longer exists")
    if blob is None:
        raise Undeliverable(f"the template's content {task.digest} is no longer stored")
    # In the schema's order (a JSONB column keeps its own): scripts get their `--name value` arguments in that order.
    order = {str(entry.get("name")): index for index, entry in enumerate(version.parameters)}
    names = sorted(task.params, key=lambda name: order.get(name, len(order)))
    params = {name: task.params[name] for name in names}
    hidden = JobSecrets(params=secrets, logins=logins or {})
    try:
        sealed = seal.seal(hidden) if hidden else None
    except SealError as exc:
        raise Undeliverable(str(exc)) from None
    return TaskJob(
        task_id=str(task.id),
        attempt=task.attempt,
        tenant_id=str(task.tenant_id),
        template_code=task.template_code,
        blob=BlobRef.of(blob),
        entry_file=version.entry_file,
        script_type=version.script_type,  # type: ignore[arg-type]
        params=params,
        secret_params=sorted(secrets),
        sealed=sealed,
        execution=task.execution,  # type: ignore[arg-type]
        targets=target_plan(task),
        timeout=task.timeout,
        log_limit=log_limit,
    )


class Dispatcher:
    """Enqueues attempts, sets cancel keys and withdraws queued jobs, for the API and the control loop alike."""

    def __init__(self, redis: ArqRedis, box: CredentialBox, log_limit: int, seal: WorkerSeal) -> None:
        self.redis = redis
        self.box = box
        self.log_limit = log_limit
        self.seal = seal

    async def dispatch(self, session: AsyncSession, task_id: uuid.UUID) -> bool:
        """Enqueue the current attempt of a pending or queued task and mark it queued.

        False when nothing was sent: the task is no longer waiting, Redis did not answer (the row stays as it was,
        for the reconciler), or the job cannot be built (the task fails, saying why).
        """
        async with session.begin():
            # The queue time is taken before the job reaches Redis: a worker may start it (and its `started` event
            # be recorded) before the UPDATE below runs, and a queue time after the start would be a lie.
            queued_at = await session.scalar(select(func.clock_timestamp()))
            row = (
                await session.execute(
                    select(Task, TemplateVersion, Blob)
                    .outerjoin(TemplateVersion, TemplateVersion.id == Task.version_id)
                    .outerjoin(Blob, Blob.digest == Task.digest)
                    .where(Task.id == task_id)
                    .execution_options(populate_existing=True)
                )
            ).first()
            credentials = await credentials_of(session, row[0]) if row is not None else {}
        if row is None or row[0].status not in SENDABLE:
            return False
        task, version, blob = row
        try:
            secrets = self.box.open_json(task.sealed_params) if task.sealed_params else {}
            logins = open_logins(task, credentials, self.box) if task.targets else None
            job = build_job(task, version, blob, secrets, self.log_limit, self.seal, logins)
        except (Undeliverable, InvalidInput) as exc:
            await self._fail(session, task, f"the task cannot be sent to a worker: {exc}")
            return False
        if task.targets:
            async with session.begin():  # before the job is out: the worker's host events find their rows
                await open_host_runs(session, task)
        name, queue = job_id(str(task.id), task.attempt), queue_name(task.pool)
        try:
            await self.redis.enqueue_job(RUN_JOB, job.to_wire(), _job_id=name, _queue_name=queue, _expires=JOB_EXPIRES)
        except REDIS_ERRORS as exc:
            log.warning(
                "task %s attempt %d stays %s: Redis did not take its job (%s)", task.id, task.attempt, task.status, exc
            )
            return False
        async with session.begin():
            marked = await session.execute(
                update(Task)
                .where(Task.id == task.id, Task.attempt == task.attempt, Task.status.in_(SENDABLE))
                .values(status=TaskStatus.QUEUED.value, queued_at=queued_at, updated_at=func.now())
                .execution_options(synchronize_session=False)
            )
        return bool(marked.rowcount)  # type: ignore[attr-defined]

    async def _fail(self, session: AsyncSession, task: Task, error: str) -> None:
        log.error("task %s failed before it was sent: %s", task.id, error)
        async with session.begin():
            await session.execute(
                update(Task)
                .where(Task.id == task.id, Task.attempt == task.attempt, Task.status.in_(SENDABLE))
                .values(status=TaskStatus.FAILED.value, error=error, finished_at=func.now(), updated_at=func.now())
                .execution_options(synchronize_session=False)
            )

    async def request_cancel(self, task_id: uuid.UUID) -> None:
        """Set the task's cancel key: a worker does not start the task, or stops it within a second."""
        await self.redis.set(cancel_key(str(task_id)), "1", ex=CANCEL_TTL)

    async def withdraw(self, task: Task) -> None:
        """Take the current attempt's job off its queue (best effort: the cancel key stops it in any case)."""
        await self.withdraw_job(task.id, task.attempt, task.pool)

    async def withdraw_job(self, task_id: uuid.UUID, attempt: int, pool: str) -> None:
        """Remove an attempt's arq job: off its queue, its payload, and the in-progress mark a dead worker left
        (arq keeps that mark for its whole job timeout, and marked jobs at the head of a queue slow every poll).
        Best effort: the claim and cancel keys keep the attempt from running again in any case."""
        name = job_id(str(task_id), attempt)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(queue_name(pool), name)
                pipe.delete(job_key_prefix + name, in_progress_key_prefix + name)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            log.warning("the job of task %s attempt %d stays in Redis (%s)", task_id, attempt, exc)
