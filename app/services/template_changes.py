"""Changing templates: edits (in place or as a new version), switching versions, sync from Git, deletion."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import git
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import UNFINISHED_STATUSES, Task, TaskTemplate, TemplateVersion
from app.errors import Conflict, InvalidInput, NotFound
from app.services.imports import PARAMETERS_MANUAL, PARAMETERS_SCANNED, Importer
from storage.digest import Digest
from storage.errors import SnapshotRefused
from storage.trees import GitTree

IN_PLACE = (
    "name",
    "description",
    "timeout",
    "pool",
    "max_attempts",
    "retry_on",
    "execution",
    "require_sudo",
    "forks",
    "max_fail_percentage",
)
"""Fields that change the template itself: they are not part of a version."""


@dataclass(frozen=True)
class TemplateChanges:
    """None leaves a field as it is. Name, description, timeout, pool, max_attempts, retry_on and where and how
    the template runs (execution, require_sudo, forks, max_fail_percentage) change in place;
    entry file, script type and parameters make a new version (DESIGN §3); `version` makes an earlier version
    current again."""

    name: str | None = None
    description: str | None = None
    timeout: int | None = None
    entry_file: str | None = None
    script_type: str | None = None
    parameters: list[dict[str, Any]] | None = None
    version: int | None = None
    pool: str | None = None
    max_attempts: int | None = None
    retry_on: list[str] | None = None
    execution: str | None = None
    require_sudo: bool | None = None
    forks: int | None = None
    max_fail_percentage: int | None = None


@dataclass(frozen=True)
class Synced:
    """What a sync did: the new version's number (None when nothing changed) and what became of the schema."""

    version: int | None
    parameters_source: str
    """`scanned`: the schema was read again from the new commit; `manual`: the schema set by hand was kept."""
    parameters_changed: bool


async def unfinished_tasks(session: AsyncSession, template_id: int) -> int:
    """Tasks of this template that have not finished (pending, queued or running)."""
    count = await session.scalar(
        select(func.count())
        .select_from(Task)
        .where(Task.template_id == template_id, Task.status.in_([status.value for status in UNFINISHED_STATUSES]))
    )
    return count or 0


class TemplateChanger:
    def __init__(self, session: AsyncSession, importer: Importer) -> None:
        self.session = session
        self.importer = importer

    async def _template(self, tenant_id: uuid.UUID, template_id: int) -> tuple[TaskTemplate, TemplateVersion]:
        row = (
            await self.session.execute(
                select(TaskTemplate, TemplateVersion)
                .join(TemplateVersion, TemplateVersion.id == TaskTemplate.current_version_id)
                .where(TaskTemplate.id == template_id, TaskTemplate.tenant_id == tenant_id)
                .with_for_update(of=TaskTemplate)
            )
        ).first()
        if row is None:
            raise NotFound(f"no template {template_id}")
        template, version = row
        return template, version

    async def _add_version(
        self,
        template: TaskTemplate,
        base: TemplateVersion,
        *,
        digest: Digest,
        source: dict[str, Any] | None,
        created_by: uuid.UUID | None,
        **fields: Any,
    ) -> TemplateVersion:
        number = await self.session.scalar(
            select(func.max(TemplateVersion.version)).where(TemplateVersion.template_id == template.id)
        )
        version = TemplateVersion(
            template_id=template.id,
            version=(number or 0) + 1,
            digest=digest,
            script_type=fields.get("script_type") or base.script_type,
            entry_file=fields.get("entry_file") or base.entry_file,
            parameters=fields["parameters"] if fields.get("parameters") is not None else base.parameters,
            parameters_source=fields.get("parameters_source") or base.parameters_source,
            source=source,
            created_by=created_by,
        )
        self.session.add(version)
        await self.session.flush()
        template.current_version_id = version.id
        template.updated_at = datetime.now(UTC)
        return version

    def _check_entry_file(self, tenant_id: uuid.UUID, source: dict[str, Any], entry_file: str) -> None:
        mirror = self.importer.mirrors.path(tenant_id, int(source["repository_id"]))
        try:
            with git.Repo(mirror) as repo:
                paths = {e.path for e in GitTree(repo, source["commit_sha"], source["original_path"]).entries()}
        except (git.NoSuchPathError, git.InvalidGitRepositoryError, SnapshotRefused) as exc:
            raise InvalidInput(
                "cannot check entry_file: the repository this version came from is gone; sync or re-import instead",
                {"entry_file": "cannot be checked against the snapshot"},
            ) from exc
        if entry_file not in paths:
            raise InvalidInput(f"entry_file {entry_file!r} is not in the snapshot", {"entry_file": "not in snapshot"})

    async def change(
        self, tenant_id: uuid.UUID, template_id: int, changes: TemplateChanges, created_by: uuid.UUID | None
    ) -> None:
        async with self.session.begin():
            template, current = await self._template(tenant_id, template_id)
            for name in IN_PLACE:
                if getattr(changes, name) is not None:
                    setattr(template, name, getattr(changes, name))
            template.updated_at = datetime.now(UTC)
            if changes.version is not None:
                # Locked so that retention, which deletes versions no longer kept, cannot take it meanwhile.
                target = await self.session.scalar(
                    select(TemplateVersion)
                    .where(TemplateVersion.template_id == template.id, TemplateVersion.version == changes.version)
                    .with_for_update(key_share=True)
                )
                if target is None:
                    raise InvalidInput(
                        f"template {template_id} has no version {changes.version}", {"version": "no such version"}
                    )
                template.current_version_id, current = target.id, target
            runtime = {
                "entry_file": changes.entry_file,
                "script_type": changes.script_type,
                "parameters": changes.parameters,
            }
            # Parameters given for a scanned schema pin it (`manual`) even when they equal it: syncs keep them then.
            pinned = changes.parameters is not None and current.parameters_source == PARAMETERS_SCANNED
            if pinned or any(getattr(current, key) != value for key, value in runtime.items() if value is not None):
                if changes.entry_file is not None and changes.entry_file != current.entry_file:
                    if current.source is None:
                        raise InvalidInput("this version has no recorded source to check entry_file against")
                    await self.importer.mirrors.pool.run(
                        tenant_id, self._check_entry_file, tenant_id, current.source, changes.entry_file
                    )
                given = PARAMETERS_MANUAL if changes.parameters is not None else None
                await self._add_version(
                    template,
                    current,
                    digest=current.digest,
                    source=current.source,
                    created_by=created_by,
                    parameters_source=given,
                    **runtime,
                )

    async def sync(self, tenant_id: uuid.UUID, template_id: int, created_by: uuid.UUID | None) -> Synced:
        """Re-import from the recorded path at the branch head. A scanned schema is read again from the new commit
        (a changed header or survey gives a new version, even when the files' digest is the same); a schema set by
        hand is kept."""
        template, current = await self._template(tenant_id, template_id)
        info = dict(template.source_git_info or {})
        entry_file, script_type, current_digest = current.entry_file, current.script_type, current.digest
        origin, current_parameters, synced_from = current.parameters_source, current.parameters, current.id
        await self.session.rollback()
        if "repository_id" not in info:
            raise Conflict(f"template {template_id} has no recorded Git source to sync from")
        try:
            source = await self.importer.locate(
                tenant_id, int(info["repository_id"]), info["original_path"], entry_file
            )
        except InvalidInput as exc:
            raise Conflict(f"template {template_id} cannot be synced: {exc}") from exc
        parameters = None
        if origin == PARAMETERS_SCANNED:
            schema = await self.importer.mirrors.pool.run(tenant_id, source.read_schema, script_type, entry_file)
            parameters = schema.parameters_json()
        changed_schema = parameters is not None and parameters != current_parameters
        stored = await self.importer.store_content(source)
        if stored.digest == current_digest and not changed_schema:
            return Synced(None, origin, parameters_changed=False)

        async def write(digest: Digest) -> int:
            template, current = await self._template(tenant_id, template_id)
            if current.id != synced_from:  # an edit or a switch of version came first: its choice stands
                raise Conflict(
                    f"template {template_id} changed while it was being synced (version "
                    f"{current.version} is current now); sync it again"
                )
            template.source_git_info = source.snapshot_info
            version = await self._add_version(
                template,
                current,
                digest=digest,
                source=source.snapshot_info,
                created_by=created_by,
                parameters=parameters,
            )
            return version.version

        number, _, _ = await self.importer.commit_version(source, stored, write)
        return Synced(number, origin, parameters_changed=changed_schema)

    async def delete(self, tenant_id: uuid.UUID, template_id: int) -> None:
        """Delete a template and its versions (their blobs go at the next GC), unless a task still needs it."""
        async with self.session.begin():
            template, _ = await self._template(tenant_id, template_id)
            if (pending := await unfinished_tasks(self.session, template.id)) > 0:
                raise Conflict(f"template {template_id} has {pending} unfinished tasks; cancel or wait for them")
            await self.session.execute(
                update(TaskTemplate)
                .where(TaskTemplate.id == template.id)
                .values(current_version_id=None, import_state="pending")
            )
            await self.session.delete(template)
