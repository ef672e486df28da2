"""`/api/v1/git-repositories`: a tenant's Git repositories."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from pydantic import BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import IdPath, Page, PageNumber, PageSize, RowOut
from app.db.models import Role
from app.services.credentials import Credentials
from app.services.repositories import Repositories, RepositoryFields


class CredentialsIn(BaseModel):
    kind: Literal["https_token", "ssh_key"]
    secret: str = Field(min_length=1, description="The token or the private key; stored encrypted, never returned.")
    username: str = ""


class RepositoryIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    branch: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Default: the remote's default branch (where its HEAD points).",
    )
    credentials: CredentialsIn | None = None


class RepositoryUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    credentials: CredentialsIn | None = None
    clear_credentials: bool = False


class RepositoryOut(RowOut):
    id: int
    name: str
    url: str
    branch: str
    auth_kind: str
    head_commit: str | None
    synced_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ScanOut(BaseModel):
    commit: str
    candidates: list[dict[str, Any]]


class SyncOut(BaseModel):
    id: int
    commit: str


def _fields(body: RepositoryIn | RepositoryUpdate) -> RepositoryFields:
    credentials = body.credentials
    return RepositoryFields(
        name=body.name,
        url=body.url,
        branch=body.branch,
        credentials=Credentials(credentials.kind, credentials.secret, credentials.username) if credentials else None,
        clear_credentials=isinstance(body, RepositoryUpdate) and body.clear_credentials,
    )


class RepositoryController(Controller):
    path = "/api/v1/git-repositories"
    tags = ["git repositories"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post(
        "/",
        summary="Add a repository",
        description="The remote is read at once (`git ls-remote`): a url that is not a repository or cannot be "
        "reached, or a branch it does not have, answers 422 naming the problem, and nothing is written.",
    )
    async def create(
        self,
        data: JSONBody[RepositoryIn],
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> RepositoryOut:
        principal.require(Role.ADMIN)
        return RepositoryOut.of(await repositories.create(principal.tenant_id, _fields(data)))

    @get("/", summary="List repositories")
    async def index(
        self,
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
        page: PageNumber = 1,
        page_size: PageSize = 50,
    ) -> Page[RepositoryOut]:
        rows, total = await repositories.page(principal.tenant_id, page, page_size)
        return Page(items=[RepositoryOut.of(row) for row in rows], total=total, page=page, page_size=page_size)

    @get("/{repository_id:int}", summary="One repository")
    async def show(
        self,
        repository_id: IdPath,
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> RepositoryOut:
        return RepositoryOut.of(await repositories.get(principal.tenant_id, repository_id))

    @put("/{repository_id:int}", summary="Change a repository")
    async def update(
        self,
        repository_id: IdPath,
        data: JSONBody[RepositoryUpdate],
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> RepositoryOut:
        principal.require(Role.ADMIN)
        return RepositoryOut.of(await repositories.update(principal.tenant_id, repository_id, _fields(data)))

    @delete("/{repository_id:int}", summary="Delete a repository (its templates keep working)")
    async def remove(
        self,
        repository_id: IdPath,
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> None:
        principal.require(Role.ADMIN)
        await repositories.delete(principal.tenant_id, repository_id)

    @post("/{repository_id:int}/sync", summary="Fetch the branch; answers the commit it now points at")
    async def sync(
        self,
        repository_id: IdPath,
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> SyncOut:
        principal.require(Role.OPERATOR)
        row = await repositories.sync(principal.tenant_id, repository_id)
        return SyncOut(id=row.id, commit=row.head_commit or "")

    @post("/{repository_id:int}/scan-templates", summary="Sync, then list template candidates at the branch head")
    async def scan(
        self,
        repository_id: IdPath,
        principal: NamedDependency[Principal],
        repositories: NamedDependency[Repositories],
    ) -> ScanOut:
        principal.require(Role.OPERATOR)
        commit, candidates = await repositories.scan(principal.tenant_id, repository_id)
        return ScanOut(commit=commit, candidates=[candidate.to_json() for candidate in candidates])
