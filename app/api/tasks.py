"""`/api/v1/tasks`: run a template, list and read tasks, cancel them, read or follow their output."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from pydantic import AliasChoices, BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import INT8_MAX, IdQuery, Page, PageNumber, PageSize, RowId, Timestamped, VersionNumber
from app.db.models import Role, Task
from app.errors import InvalidInput
from app.services.tasks import Ending, KeepAlive, NewTask, Tasks
from app.services.workers import Workers
from worker.protocol import LogLine, TaskStatusName

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


class LogLineOut(BaseModel):
    seq: int = Field(description="The line's number in the task's output, counted over all its attempts.")
    stream: Literal["stdout", "stderr"]
    line: str
    attempt: int | None = Field(
        description="The attempt that wrote the line; null only for lines of a retried task stored before "
        "attempts were recorded."
    )

    @classmethod
    def of(cls, line: LogLine) -> LogLineOut:
        return cls(seq=line.seq, stream=line.stream, line=line.line, attempt=line.attempt or None)


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


async def _events(tasks: Tasks, task_id: uuid.UUID, after: int) -> AsyncIterator[ServerSentEventMessage]:
    async for item in tasks.follow(task_id, after):
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
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
    ) -> LogsOut | ServerSentEvent:
        after = _resume_point(after, last_event_id)
        if follow:
            await tasks.get(principal.tenant_id, task_id)
            await tasks.session.rollback()  # hold no database connection while the stream is open
            # The route's JSON media type would win over the stream's own; the header keeps the stream's.
            return ServerSentEvent(_events(tasks, task_id, after), headers={"Content-Type": EVENT_STREAM})
        page = await tasks.logs(principal.tenant_id, task_id, after)
        items = [LogLineOut.of(line) for line in page.items]
        return LogsOut(items=items, truncated=page.truncated, status=page.status)
