"""`/api/v1/admin`: GC and verify over HTTP for `system` tokens. Both answer 202 with a run id at once; the run goes
on in this server process and its progress, then its report, is read at `/api/v1/admin/runs/{id}`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal
from app.api.schemas import INT8_MAX, Page, PageNumber, PageSize, RowOut
from app.db.models import Role, RunKind
from app.errors import InvalidInput
from app.maintenance.launcher import RunLauncher
from app.maintenance.runs import get_run, list_runs
from app.maintenance.start import Maintenance, StartedRun
from storage.digest import Digest
from storage.errors import InvalidDigest

MAX_GRACE_SECONDS = 10 * 366 * 86400.0
"""Ten years: a grace longer than that keeps everything, and far longer ones overflow date arithmetic."""
GRACE_DESCRIPTION = "Seconds, at most ten years. Default: the server's AHOP_GC_GRACE."


class GcIn(BaseModel):
    dry_run: bool = False
    grace_seconds: float | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS, description=GRACE_DESCRIPTION)


class VerifyIn(BaseModel):
    digest: str | None = Field(default=None, description="Only this blob, sha256:<64 hex>.")
    sample: int | None = Field(default=None, ge=1, le=INT8_MAX, description="Only this many blobs, chosen at random.")
    grace_seconds: float | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS, description=GRACE_DESCRIPTION)
    repair: bool = False


class RunStarted(BaseModel):
    run_id: uuid.UUID
    kind: str
    status: str
    report_url: str


class RunOut(RowOut):
    id: uuid.UUID
    kind: str
    status: str = Field(description="running, succeeded, problems (verify found some) or failed (see error).")
    options: dict[str, Any]
    report: dict[str, Any] = Field(description="While running: {progress}; at the end: the whole report.")
    error: str | None
    started_by: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _started_by(principal: Principal) -> str:
    return f"token {principal.token_id} (tenant {principal.tenant_id})"


def _accepted(started: StartedRun, kind: str, launcher: RunLauncher) -> RunStarted:
    launcher.launch(started)
    return RunStarted(
        run_id=started.run_id, kind=kind, status="running", report_url=f"/api/v1/admin/runs/{started.run_id}"
    )


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post("/gc", status_code=202, summary="Start a GC (409 while another one runs)")
    async def gc(
        self,
        data: JSONBody[GcIn],
        principal: NamedDependency[Principal],
        maintenance: NamedDependency[Maintenance],
        launcher: NamedDependency[RunLauncher],
    ) -> RunStarted:
        principal.require(Role.SYSTEM)
        started = await maintenance.start_gc(
            dry_run=data.dry_run, grace=data.grace_seconds, wait=False, started_by=_started_by(principal)
        )
        return _accepted(started, "gc", launcher)

    @post("/verify", status_code=202, summary="Start a verify of every blob, a sample or one digest")
    async def verify(
        self,
        data: JSONBody[VerifyIn],
        principal: NamedDependency[Principal],
        maintenance: NamedDependency[Maintenance],
        launcher: NamedDependency[RunLauncher],
    ) -> RunStarted:
        principal.require(Role.SYSTEM)
        if data.digest is not None and data.sample is not None:
            raise InvalidInput("give digest or sample, not both", {"sample": "not with digest"})
        try:
            digest = Digest.parse(data.digest) if data.digest is not None else None
        except InvalidDigest as exc:
            raise InvalidInput(str(exc), {"digest": str(exc)}) from exc
        started = await maintenance.start_verify(
            digest=digest,
            sample=data.sample,
            grace=data.grace_seconds,
            repair=data.repair,
            started_by=_started_by(principal),
        )
        return _accepted(started, "verify", launcher)

    @get("/runs/{run_id:uuid}", summary="A GC or verify run: its progress, then its report")
    async def run(
        self,
        run_id: FromPath[uuid.UUID],
        principal: NamedDependency[Principal],
        db_session: NamedDependency[AsyncSession],
    ) -> RunOut:
        principal.require(Role.SYSTEM)
        return RunOut.of(await get_run(db_session, run_id))

    @get("/runs", summary="GC and verify runs, newest first")
    async def runs(
        self,
        principal: NamedDependency[Principal],
        db_session: NamedDependency[AsyncSession],
        kind: FromQuery[RunKind | None] = None,
        page: PageNumber = 1,
        page_size: PageSize = 20,
    ) -> Page[RunOut]:
        principal.require(Role.SYSTEM)
        total, rows = await list_runs(db_session, kind, (page - 1) * page_size, page_size)
        return Page[RunOut](items=[RunOut.of(row) for row in rows], total=total, page=page, page_size=page_size)
