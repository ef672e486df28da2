"""`/api/v1/tasks`: run a template, list and read tasks, cancel them, read or follow their output."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, Self, cast

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from pydantic import AliasChoices, BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import INT4_MAX, INT8_MAX, IdQuery, Page, PageNumber, PageSize, RowId, Timestamped, VersionNumber
from app.db.models import HostRun, Role, Task
from app.errors import InvalidInput
from app.services.tasks import Ending, KeepAlive, NewTask, Tasks
from app.services.workers import Workers
from worker.protocol import Execution, HostStatusName, LogLine, TaskStatusName

EVENT_STREAM = "text/event-stream; charset=utf-8"


class TaskIn(BaseModel):
    template_id: RowId
    params: dict[str, Any] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("params", "variables"),
        description="Parameter values by name (`variables` is accepted too); checked against the version's schema.",
    )
    version: VersionNumber | None = Field(
        default=None, description="A version number of the template; default current."
    )
    timeout: int | None = Field(default=None, ge=1, le=7 * 86400, description="Seconds; default the template's.")
    name: str = Field(default="", max_length=200)
    hosts: list[Annotated[int, Field(ge=1, le=INT8_MAX)] | Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=10_000, description="Target hosts of the inventory, by id or name."
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100, description="Every host with one of these labels is a target."
    )


class TargetOut(BaseModel):
    """A host of the task's inventory snapshot, as it was when the task was created (no credential)."""

    host_id: int
    name: str
    address: str
    port: int
    user: str
    fingerprints: list[str] = Field(description="SHA256 fingerprints of the host keys pinned then.")
    labels: list[str]
    variables: dict[str, Any]

    @classmethod
    def of(cls, entry: dict[str, Any]) -> TargetOut:
        return cls.model_validate({name: entry.get(name) for name in cls.model_fields})


class TaskOut(Timestamped):
    id: str
    status: str
    template_id: int | None
    template_code: str
    version: int
    digest: str
    pool: str
    name: str
    params: dict[str, Any] = Field(description="Password values are shown as ********.")
    timeout: int
    attempt: int
    max_attempts: int
    retry_on: list[str]
    execution: Execution = Field(description="Where the task runs: on the worker, or on its `targets`.")
    targets: list[TargetOut] | None = Field(
        description="The hosts the task runs on, as the inventory had them when it was created: every attempt runs "
        "on these. Null for a task that runs on the worker."
    )
    require_sudo: bool
    forks: int
    max_fail_percentage: int
    exit_code: int | None
    error: str | None
    worker: str | None
    cancel_requested: bool
    log_lines: int = Field(description="Output lines written in all (the log keeps the newest of each attempt).")
    log_truncated: bool
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, task: Task) -> Self:
        return cls(
            id=str(task.id),
            status=task.status,
            template_id=task.template_id,
            template_code=task.template_code,
            version=task.version,
            digest=str(task.digest),
            pool=task.pool,
            name=task.name,
            params=task.params,
            timeout=task.timeout,
            attempt=task.attempt,
            max_attempts=task.max_attempts,
            retry_on=list(task.retry_on),
            execution=cast(Execution, task.execution),
            targets=None if task.targets is None else [TargetOut.of(entry) for entry in task.targets],
            require_sudo=task.require_sudo,
            forks=task.forks,
            max_fail_percentage=task.max_fail_percentage,
            exit_code=task.exit_code,
            error=task.error,
            worker=task.worker_id,
            cancel_requested=task.cancel_requested,
            log_lines=task.log_lines,
            log_truncated=task.log_truncated,
            created_at=task.created_at,
            queued_at=task.queued_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )


class TaskCreated(TaskOut):
    warnings: list[str] = Field(
        default_factory=list,
        description="What may keep the task from running soon, although it was accepted and queued: no live worker "
        "serves the template's pool (`no live worker serves pool NAME; ...`), or the workers' heartbeats could not "
        "be read from Redis. Empty when a live worker serves the pool.",
    )


class HostRunOut(Timestamped):
    """One host's run in one attempt of a task that runs on targets."""

    host: str = Field(description="The host's name in the task's snapshot.")
    host_id: int | None
    address: str
    attempt: int
    status: HostStatusName = Field(
        description="pending until the worker starts it, running, then how it ended; lost when its worker was."
    )
    exit_code: int | None
    error: str | None
    digest: str | None = Field(description="The content the host verified and ran (`sha256:…`); null if none.")
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, run: HostRun) -> HostRunOut:
        columns = {name: getattr(run, name) for name in cls.model_fields if hasattr(run, name)}
        digest = f"sha256:{run.digest}" if run.digest else None
        return cls.model_validate({**columns, "host": run.host_name, "digest": digest})


class LogLineOut(BaseModel):
    seq: int = Field(description="The line's number in the task's output, counted over all its attempts.")
    stream: Literal["stdout", "stderr"]
    line: str
    attempt: int | None = Field(
        description="The attempt that wrote the line; null only for lines of a retried task stored before "
        "attempts were recorded."
    )
    host: str = Field(description='The target host whose run printed the line; "" for the worker\'s own lines.')

    @classmethod
    def of(cls, line: LogLine) -> LogLineOut:
        return cls(seq=line.seq, stream=line.stream, line=line.line, attempt=line.attempt or None, host=line.host)


class LogsOut(BaseModel):
    items: list[LogLineOut]
    truncated: bool = Field(description="The oldest lines of an attempt were dropped (a log keeps the newest).")
    status: str


def _resume_point(after: int, last_event_id: str | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        seq = int(last_event_id)
    except ValueError:
        seq = None
    if seq is None or seq > INT8_MAX:
        raise InvalidInput(
            f"Last-Event-ID {last_event_id!r} is not a line number",
            {"Last-Event-ID": "expected the seq of the last line received"},
        )
    return max(after, seq)


async def _events(
    tasks: Tasks, task_id: uuid.UUID, after: int, host: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    async for item in tasks.follow(task_id, after):
        if isinstance(item, LogLine) and host is not None and item.host != host:
            continue
        if isinstance(item, KeepAlive):
            yield ServerSentEventMessage(data=None, comment="keep-alive")
        elif isinstance(item, Ending):
            end = {"status": item.status, "exit_code": item.exit_code, "error": item.error}
            yield ServerSentEventMessage(event="end", data=json.dumps(end))
        else:
            yield ServerSentEventMessage(id=item.seq, data=LogLineOut.of(item).model_dump_json())


class TaskController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post("/", summary="Run a template: the task is recorded, then queued for a worker of the template's pool")
    async def create(
        self,
        data: JSONBody[TaskIn],
        principal: NamedDependency[Principal],
        tasks: NamedDependency[Tasks],
        workers: NamedDependency[Workers],
    ) -> TaskCreated:
        principal.require(Role.OPERATOR)
        new = NewTask(
            template_id=data.template_id,
            params=data.params,
            version=data.version,
            timeout=data.timeout,
            name=data.name,
            hosts=data.hosts,
            labels=data.labels,
        )
        task = await tasks.create(principal.tenant_id, new, principal.token_id)
        created = TaskCreated.of(task)
        created.warnings = await workers.pool_warnings(task.pool)
        return created

    @get("/", summary="List tasks, newest first")
    async def index(
        self,
        principal: NamedDependency[Principal],
        tasks: NamedDependency[Tasks],
        status: Annotated[TaskStatusName | None, QueryParameter()] = None,
        template_id: IdQuery = None,
        id_prefix: Annotated[
            str | None,
            QueryParameter(
                pattern=r"^[0-9a-fA-F][0-9a-fA-F-]{0,35}$",
                description="Only tasks whose id starts so (hex digits and '-'), as a shortened id in a table reads.",
            ),
        ] = None,
        page: PageNumber = 1,
        page_size: PageSize = 50,
    ) -> Page[TaskOut]:
        rows, total = await tasks.page(
            principal.tenant_id,
            status=status,
            template_id=template_id,
            id_prefix=id_prefix.lower() if id_prefix else None,
            page=page,
            page_size=page_size,
        )
        return Page(items=[TaskOut.of(task) for task in rows], total=total, page=page, page_size=page_size)

    @get("/{task_id:uuid}", summary="One task")
    async def show(
        self, task_id: FromPath[uuid.UUID], principal: NamedDependency[Principal], tasks: NamedDependency[Tasks]
    ) -> TaskOut:
        return TaskOut.of(await tasks.get(principal.tenant_id, task_id))

    @post(
        "/{task_id:uuid}/cancel",
        status_code=200,
        summary="Cancel a task (409 once it has finished)",
        description="A task that has not started is cancelled at once and never starts. A running one gets "
        "`cancel_requested`; its worker stops the script within a second and the task ends `cancelled`.",
    )
    async def cancel(
        self, task_id: FromPath[uuid.UUID], principal: NamedDependency[Principal], tasks: NamedDependency[Tasks]
    ) -> TaskOut:
        principal.require(Role.OPERATOR)
        return TaskOut.of(await tasks.cancel(principal.tenant_id, task_id))

    @get(
        "/{task_id:uuid}/logs",
        summary="A task's output after line `after`; with follow=true, a stream of server-sent events",
        description="Following sends each line once as an event with its seq as id and its JSON (seq, stream, "
        "line, attempt) as data, then an `end` event with the task's status, exit code and error. Resume with "
        "`after` or `Last-Event-ID`.",
        responses={200: ResponseSpec(data_container=LogsOut, description="The lines (or, following, the events)")},
    )
    async def logs(
        self,
        task_id: FromPath[uuid.UUID],
        principal: NamedDependency[Principal],
        tasks: NamedDependency[Tasks],
        after: Annotated[int, QueryParameter(ge=0, le=INT8_MAX)] = 0,
        follow: Annotated[bool, QueryParameter()] = False,
        host: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=200,
                description="Only the lines that this target host's runs printed (its name in the task's snapshot).",
            ),
        ] = None,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
    ) -> LogsOut | ServerSentEvent:
        after = _resume_point(after, last_event_id)
        if follow:
            await tasks.get(principal.tenant_id, task_id)
            await tasks.session.rollback()  # hold no database connection while the stream is open
            # The route's JSON media type would win over the stream's own; the header keeps the stream's.
            return ServerSentEvent(_events(tasks, task_id, after, host), headers={"Content-Type": EVENT_STREAM})
        page = await tasks.logs(principal.tenant_id, task_id, after)
        items = [LogLineOut.of(line) for line in page.items if host is None or line.host == host]
        return LogsOut(items=items, truncated=page.truncated, status=page.status)

    @get(
        "/{task_id:uuid}/hosts",
        summary="A task's runs on its target hosts, by host name (empty for a task that runs on the worker)",
        description="Each host of the task's snapshot in one attempt (default the current one): its status, exit "
        "code, error, the digest it verified and ran, and when it started and ended.",
    )
    async def hosts(
        self,
        task_id: FromPath[uuid.UUID],
        principal: NamedDependency[Principal],
        tasks: NamedDependency[Tasks],
        attempt: Annotated[int | None, QueryParameter(ge=1, le=INT4_MAX)] = None,
    ) -> list[HostRunOut]:
        return [HostRunOut.of(run) for run in await tasks.hosts(principal.tenant_id, task_id, attempt)]
