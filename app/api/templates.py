"""`/api/v1/task-templates`: import from Git, list, read, versions, and which workers hold or prefetch them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, cast

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from pydantic import BaseModel, Field, field_validator

from app.api.auth import Principal
from app.api.schemas import IdPath, Page, PageNumber, PageSize, RowId, Timestamped, VersionNumber
from app.db.models import Blob, Role, TemplateVersion
from app.errors import Conflict, Unavailable
from app.scan.params import ParamType
from app.services.imports import Importer, TemplateSpec
from app.services.template_changes import Synced, TemplateChanger, TemplateChanges
from app.services.templates import Templates, TemplateView
from app.services.workers import Workers
from worker.protocol import BlobRef, Execution, RetryOutcome, ScriptType

POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
POOL_DESCRIPTION = "The worker pool (queue) that runs the template's tasks."
MAX_ATTEMPTS_DESCRIPTION = "Attempts a task gets in all: 1 runs it once, whatever happens."
RETRY_ON_DESCRIPTION = "Outcomes that start another attempt while attempts remain; none by default."
EXECUTION_DESCRIPTION = (
    "Where its tasks run: `worker` (on the worker itself) or `targets` (on the inventory hosts each task names, "
    "over SSH; Ansible from the worker with an inventory of them)."
)
REQUIRE_SUDO_DESCRIPTION = "On targets: the entry runs as root through sudo (`sudo -n`, or the become password)."
FORKS_DESCRIPTION = "On targets: hosts a task runs on at once."
MAX_FAIL_DESCRIPTION = (
    "On targets: the percentage of a task's hosts that may fail while the task still succeeds; 0 fails the task "
    "on any failed host."
)
Forks = Annotated[int, Field(ge=1, le=1000, description=FORKS_DESCRIPTION)]
MaxFailPercentage = Annotated[int, Field(ge=0, le=100, description=MAX_FAIL_DESCRIPTION)]


def _unique(outcomes: list[RetryOutcome] | None) -> list[RetryOutcome] | None:
    return None if outcomes is None else list(dict.fromkeys(outcomes))


class Validation(BaseModel):
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)


class ParameterSpec(BaseModel):
    """One parameter in the normalized schema that scans produce and tasks are validated against."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    type: ParamType = "text"
    label: str = ""
    description: str = ""
    required: bool = False
    default: Any = None
    options: list[str] = Field(default_factory=list)
    validation: Validation = Field(default_factory=Validation)


class TemplateIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    script_type: ScriptType
    entry_file: str = Field(min_length=1, max_length=1000)
    repository_id: RowId
    original_path: str = Field(default="", max_length=1000)
    description: str = Field(default="", max_length=10_000)
    parameters: list[ParameterSpec] | None = Field(
        default=None,
        description="Omitted: the schema the scan shows for this path and entry (the entry's `@param` header, or "
        "the directory's survey), read again by each sync. Given (`[]` too): replaces it, and syncs keep it.",
    )
    timeout: int = Field(default=3600, ge=1, le=7 * 86400)
    pool: str = Field(
        default="default", min_length=1, max_length=64, pattern=POOL_PATTERN, description=POOL_DESCRIPTION
    )
    max_attempts: int = Field(default=1, ge=1, le=10, description=MAX_ATTEMPTS_DESCRIPTION)
    retry_on: list[RetryOutcome] = Field(default_factory=list, description=RETRY_ON_DESCRIPTION)
    execution: Execution | None = Field(
        default=None, description=EXECUTION_DESCRIPTION + " Default: `targets` for ansible, `worker` otherwise."
    )
    require_sudo: bool = Field(default=False, description=REQUIRE_SUDO_DESCRIPTION)
    forks: Forks = 5
    max_fail_percentage: MaxFailPercentage = 0

    _unique_retry_on = field_validator("retry_on")(_unique)


class TemplateUpdate(BaseModel):
    """Name, description, timeout, pool, max_attempts, retry_on, execution, require_sudo, forks and
    max_fail_percentage change in place; entry file, script type and parameters add a version; `version` makes an
    earlier version current again."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    timeout: int | None = Field(default=None, ge=1, le=7 * 86400)
    entry_file: str | None = Field(default=None, min_length=1, max_length=1000)
    script_type: ScriptType | None = None
    parameters: list[ParameterSpec] | None = None
    version: VersionNumber | None = None
    pool: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=POOL_PATTERN, description=POOL_DESCRIPTION
    )
    max_attempts: int | None = Field(default=None, ge=1, le=10, description=MAX_ATTEMPTS_DESCRIPTION)
    retry_on: list[RetryOutcome] | None = Field(default=None, description=RETRY_ON_DESCRIPTION)
    execution: Execution | None = Field(default=None, description=EXECUTION_DESCRIPTION)
    require_sudo: bool | None = Field(default=None, description=REQUIRE_SUDO_DESCRIPTION)
    forks: Forks | None = None
    max_fail_percentage: MaxFailPercentage | None = None

    _unique_retry_on = field_validator("retry_on")(_unique)


ParametersSource = Literal["scanned", "manual"]
PARAMETERS_SOURCE_DESCRIPTION = (
    "Where the parameter schema came from: `scanned` (the entry's header or the directory's survey, read again by "
    "each sync) or `manual` (set by hand, kept across syncs)."
)


class SyncResult(BaseModel):
    changed: bool
    version: int | None = None
    parameters_source: ParametersSource = Field(description=PARAMETERS_SOURCE_DESCRIPTION)
    parameters_changed: bool = Field(description="The new version's schema differs from the previous version's.")
    detail: str

    @classmethod
    def of(cls, synced: Synced) -> SyncResult:
        if synced.version is None:
            what = "nothing changed"
        else:
            what = f"version {synced.version}" + (", with a new parameter schema" if synced.parameters_changed else "")
        kept = (
            "parameters as the header or survey at this commit declares them"
            if synced.parameters_source == "scanned"
            else "parameters kept: they were set by hand"
        )
        return cls(
            changed=synced.version is not None,
            version=synced.version,
            parameters_source=cast(ParametersSource, synced.parameters_source),
            parameters_changed=synced.parameters_changed,
            detail=f"{what}; {kept}",
        )


class Artifact(BaseModel):
    digest: str
    tar_size: int
    zst_size: int
    files: int

    @classmethod
    def of(cls, blob: Blob) -> Artifact:
        return cls(digest=str(blob.digest), tar_size=blob.tar_size, zst_size=blob.zst_size, files=blob.files)


class TemplateOut(Timestamped):
    id: int
    code: str
    name: str
    description: str
    script_type: str | None
    entry_file: str | None
    parameters: list[dict[str, Any]]
    parameters_source: ParametersSource | None = Field(description=PARAMETERS_SOURCE_DESCRIPTION)
    timeout: int
    pool: str
    max_attempts: int
    retry_on: list[str]
    execution: Execution = Field(description=EXECUTION_DESCRIPTION)
    require_sudo: bool = Field(description=REQUIRE_SUDO_DESCRIPTION)
    forks: int = Field(description=FORKS_DESCRIPTION)
    max_fail_percentage: int = Field(description=MAX_FAIL_DESCRIPTION)
    version: int | None
    import_state: str
    source_git_info: dict[str, Any] | None
    artifact: Artifact | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: TemplateView) -> TemplateOut:
        template, version = view.template, view.version
        return cls(
            id=template.id,
            code=template.code,
            name=template.name,
            description=template.description,
            script_type=version.script_type if version else None,
            entry_file=version.entry_file if version else None,
            parameters=version.parameters if version else [],
            parameters_source=cast(ParametersSource, version.parameters_source) if version else None,
            timeout=template.timeout,
            pool=template.pool,
            max_attempts=template.max_attempts,
            retry_on=list(template.retry_on),
            execution=cast(Execution, template.execution),
            require_sudo=template.require_sudo,
            forks=template.forks,
            max_fail_percentage=template.max_fail_percentage,
            version=version.version if version else None,
            import_state=template.import_state,
            source_git_info=template.source_git_info,
            artifact=Artifact.of(view.blob) if view.blob else None,
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


class Holder(BaseModel):
    id: str
    host: str
    live: bool


class TemplateDetail(TemplateOut):
    """One template, with the live workers of its pool that hold its current content."""

    workers: list[Holder] | None = Field(
        description="Live workers of the template's pool whose stores hold the current digest; null when Redis "
        "did not answer."
    )

    @classmethod
    async def build(cls, view: TemplateView, workers: Workers) -> TemplateDetail:
        holders: list[Holder] | None = []
        if view.version is not None:
            try:
                states = await workers.holders(view.template.pool, view.version.digest)
                holders = [Holder(id=s.heartbeat.id, host=s.heartbeat.host, live=s.live) for s in states]
            except Unavailable:
                holders = None
        return cls(**TemplateOut.of(view).model_dump(), workers=holders)


class PrefetchResult(BaseModel):
    digest: str
    pool: str
    workers: list[str] = Field(description="The live workers of the pool that were asked to prefetch.")
    detail: str


class VersionOut(Timestamped):
    version: int
    script_type: str
    entry_file: str
    parameters: list[dict[str, Any]]
    parameters_source: ParametersSource = Field(description=PARAMETERS_SOURCE_DESCRIPTION)
    source: dict[str, Any] | None
    artifact: Artifact
    created_at: datetime

    @classmethod
    def of(cls, version: TemplateVersion, blob: Blob) -> VersionOut:
        return cls(
            version=version.version,
            script_type=version.script_type,
            entry_file=version.entry_file,
            parameters=version.parameters,
            parameters_source=cast(ParametersSource, version.parameters_source),
            source=version.source,
            artifact=Artifact.of(blob),
            created_at=version.created_at,
        )


class TemplateController(Controller):
    path = "/api/v1/task-templates"
    tags = ["task templates"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post("/", summary="Import a template from a repository path at its branch head")
    async def create(
        self,
        data: JSONBody[TemplateIn],
        principal: NamedDependency[Principal],
        importer: NamedDependency[Importer],
        templates: NamedDependency[Templates],
        workers: NamedDependency[Workers],
    ) -> TemplateDetail:
        principal.require(Role.ADMIN)
        parameters = [p.model_dump() for p in data.parameters] if data.parameters is not None else None
        spec = TemplateSpec(**data.model_dump(exclude={"parameters"}), parameters=parameters)
        imported = await importer.import_template(principal.tenant_id, spec, principal.token_id)
        await workers.announce(imported.template.pool, BlobRef.of(imported.blob))
        return await TemplateDetail.build(await templates.get(principal.tenant_id, imported.template.id), workers)

    @get("/", summary="List templates")
    async def index(
        self,
        principal: NamedDependency[Principal],
        templates: NamedDependency[Templates],
        script_type: Annotated[str | None, QueryParameter()] = None,
        search: Annotated[str | None, QueryParameter(max_length=200)] = None,
        page: PageNumber = 1,
        page_size: PageSize = 50,
    ) -> Page[TemplateOut]:
        views, total = await templates.page(
            principal.tenant_id, script_type=script_type, search=search, page=page, page_size=page_size
        )
        return Page(items=[TemplateOut.of(view) for view in views], total=total, page=page, page_size=page_size)

    @get("/{template_id:int}", summary="One template, with the live workers that hold its current content")
    async def show(
        self,
        template_id: IdPath,
        principal: NamedDependency[Principal],
        templates: NamedDependency[Templates],
        workers: NamedDependency[Workers],
    ) -> TemplateDetail:
        return await TemplateDetail.build(await templates.get(principal.tenant_id, template_id), workers)

    @get("/{template_id:int}/versions", summary="A template's versions, newest first")
    async def versions(
        self, template_id: IdPath, principal: NamedDependency[Principal], templates: NamedDependency[Templates]
    ) -> list[VersionOut]:
        rows = await templates.versions(principal.tenant_id, template_id)
        return [VersionOut.of(version, blob) for version, blob in rows]

    @put("/{template_id:int}", summary="Change a template (runtime fields add a version)")
    async def update(
        self,
        template_id: IdPath,
        data: JSONBody[TemplateUpdate],
        principal: NamedDependency[Principal],
        changer: NamedDependency[TemplateChanger],
        templates: NamedDependency[Templates],
        workers: NamedDependency[Workers],
    ) -> TemplateDetail:
        principal.require(Role.ADMIN)
        parameters = [p.model_dump() for p in data.parameters] if data.parameters is not None else None
        changes = TemplateChanges(**data.model_dump(exclude={"parameters"}), parameters=parameters)
        await changer.change(principal.tenant_id, template_id, changes, principal.token_id)
        return await TemplateDetail.build(await templates.get(principal.tenant_id, template_id), workers)

    @delete("/{template_id:int}", summary="Delete a template (409 while unfinished tasks use it)")
    async def remove(
        self,
        template_id: IdPath,
        principal: NamedDependency[Principal],
        changer: NamedDependency[TemplateChanger],
    ) -> None:
        principal.require(Role.ADMIN)
        await changer.delete(principal.tenant_id, template_id)

    @post("/{template_id:int}/sync", summary="Re-import from the recorded path at the branch head")
    async def sync(
        self,
        template_id: IdPath,
        principal: NamedDependency[Principal],
        changer: NamedDependency[TemplateChanger],
        templates: NamedDependency[Templates],
        workers: NamedDependency[Workers],
    ) -> SyncResult:
        principal.require(Role.ADMIN)
        synced = await changer.sync(principal.tenant_id, template_id, principal.token_id)
        if synced.version is not None:
            view = await templates.get(principal.tenant_id, template_id)
            if view.blob is not None:
                await workers.announce(view.template.pool, BlobRef.of(view.blob))
        return SyncResult.of(synced)

    @post(
        "/{template_id:int}/prefetch",
        status_code=202,
        summary="Ask the live workers of the template's pool to fetch its current content now",
        description="Answers at once with the workers asked (none when no worker of the pool is live); each "
        "fetches in the background and then shows up in the template's `workers`.",
    )
    async def prefetch(
        self,
        template_id: IdPath,
        principal: NamedDependency[Principal],
        templates: NamedDependency[Templates],
        workers: NamedDependency[Workers],
    ) -> PrefetchResult:
        principal.require(Role.OPERATOR)
        view = await templates.get(principal.tenant_id, template_id)
        if view.blob is None:
            raise Conflict(f"template {template_id} has no current version to prefetch")
        pool = view.template.pool
        asked = await workers.prefetch(pool, BlobRef.of(view.blob))
        detail = (
            f"asked {len(asked)} live worker(s) of pool {pool!r} to prefetch"
            if asked
            else f"no worker of pool {pool!r} is live; none was asked"
        )
        return PrefetchResult(digest=str(view.blob.digest), pool=pool, workers=asked, detail=detail)
