"""`/api/v1/artifacts/{digest}`: a blob's figures, who uses it, and its bytes."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream
from pydantic import BaseModel

from app.api.auth import Principal
from app.api.schemas import Timestamped, read_fields
from app.services.artifacts import Artifacts, parse_digest


class UsageOut(BaseModel):
    template_id: int
    code: str
    version: int
    current: bool


class ArtifactOut(Timestamped):
    digest: str
    tar_size: int
    zst_size: int
    zst_sha256: str
    files: int
    state: str
    verified_at: datetime | None
    created_at: datetime
    used_by: list[UsageOut]


class ArtifactController(Controller):
    path = "/api/v1/artifacts"
    tags = ["artifacts"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/{digest:str}", summary="A blob's figures and the caller's templates that use it")
    async def show(
        self, digest: FromPath[str], principal: NamedDependency[Principal], artifacts: NamedDependency[Artifacts]
    ) -> ArtifactOut:
        view = await artifacts.get(principal.tenant_id, parse_digest(digest))
        return read_fields(ArtifactOut, view.blob, digest=str(view.blob.digest), used_by=view.used_by)

    @get("/{digest:str}/blob", summary="The .tar.zst itself (zstd -dc | sha256sum prints the digest)")
    async def blob(
        self, digest: FromPath[str], principal: NamedDependency[Principal], artifacts: NamedDependency[Artifacts]
    ) -> Stream:
        parsed = parse_digest(digest)
        chunks = await artifacts.stream(principal.tenant_id, parsed)
        return Stream(
            chunks,
            media_type="application/zstd",
            headers={"Content-Disposition": f'attachment; filename="{parsed.hex}.tar.zst"'},
        )
