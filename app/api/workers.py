"""`/api/v1/workers`: the workers that heartbeat into Redis, live or dead. Shared by every tenant."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get
from litestar.di import NamedDependency
from pydantic import BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import Timestamped, read_fields
from app.services.workers import Workers, WorkerState


class WorkerOut(Timestamped):
    id: str
    host: str
    pid: int
    pools: list[str]
    live: bool = Field(description="The latest heartbeat is at most `heartbeat_timeout` seconds old.")
    last_seen: datetime
    age_seconds: float = Field(description="Seconds since the latest heartbeat, by the server's clock.")
    running: int = Field(description="Tasks the worker runs now (of every tenant, so only their count).")
    cache_bytes: int
    cache_entries: int
    downloads: int = Field(description="Blobs fetched from S3 since the worker process started.")
    version: str
    protocol: int
    started_at: datetime

    @classmethod
    def of(cls, state: WorkerState) -> WorkerOut:
        return read_fields(
            cls,
            state.heartbeat,
            live=state.live,
            last_seen=state.last_seen,
            age_seconds=round(state.age_seconds, 3),
            running=len(state.heartbeat.running),
            started_at=state.started_at,
        )


class WorkerList(BaseModel):
    items: list[WorkerOut]
    total: int
    live: int


class WorkerController(Controller):
    path = "/api/v1/workers"
    tags = ["workers"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get(
        "/",
        summary="List the workers, live and dead",
        description="Every role may list them: workers are shared by all tenants. A worker dead for longer than "
        "the setting `worker_forget_after` is dropped from the list.",
    )
    async def index(self, principal: NamedDependency[Principal], workers: NamedDependency[Workers]) -> WorkerList:
        del principal  # any valid token
        items = [WorkerOut.of(state) for state in await workers.known()]
        return WorkerList(items=items, total=len(items), live=sum(item.live for item in items))
