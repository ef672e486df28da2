"""Backfill: import each template that `ahop db adopt-legacy` left pending (see `app.services.legacy`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import git
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import GitRepository, TaskTemplate, TemplateVersion
from app.errors import AppError, Conflict, InvalidInput, NotFound, Upstream
from app.git.mirror import Remote
from app.git.urls import check_remote_url
from app.scan.candidates import PLAYBOOKS
from app.scan.params import NAME, TYPE_NAMES, Parameter, coerce_default, resolve_type
from app.services.imports import Importer
from app.services.legacy import TIME_TYPES
from storage.digest import Digest
from storage.errors import SnapshotRefused
from storage.trees import normalize_repo_path
from worker.protocol import SCRIPT_TYPES


def convert_parameters(raw: object) -> list[dict[str, Any]]:
    """The legacy parameter list (`{name, type, label, description, required, default_value, options, …}`) in our
    normalized schema; `InvalidInput` naming the first parameter that has no counterpart."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise InvalidInput(f"the legacy parameters are not a JSON list of objects: {str(raw)[:80]!r}")
    converted = []
    for item in raw:
        name = str(item.get("name") or "")
        if not NAME.fullmatch(name) or len(name) > 100:
            raise InvalidInput(f"parameter name {name!r} is not allowed: expected [A-Za-z_][A-Za-z0-9_-]*")
        word = str(item.get("type") or "text")
        kind = resolve_type(word) or ("text" if word.lower() in TIME_TYPES else None)
        if kind is None:
            raise InvalidInput(f"parameter {name!r} has type {word!r}, which has no counterpart among {TYPE_NAMES}")
        options = tuple(str(option) for option in item.get("options") or ())
        default, problem = coerce_default(kind, item.get("default_value", item.get("default")), options)
        if problem:
            raise InvalidInput(f"parameter {name!r}: {problem}")
        converted.append(
            Parameter(
                name,
                kind,
                str(item.get("label") or name),
                str(item.get("description") or ""),
                bool(item.get("required")),
                default,
                options,
            ).to_json()
        )
    return converted


@dataclass(frozen=True)
class Outcome:
    """One pending template after a backfill: imported (`digest` is `sha256:<hex>`) or not (`reason`)."""

    template_id: int
    tenant_id: uuid.UUID
    code: str
    digest: str | None = None
    reason: str | None = None


class Backfiller:
    def __init__(self, session: AsyncSession, importer: Importer) -> None:
        self.session = session
        self.importer = importer
        self._heads: dict[int, str | AppError] = {}
        """Each repository is fetched once per run to look at its paths; a failed fetch is not retried."""

    async def run(self, tenant_id: uuid.UUID | None = None) -> list[Outcome]:
        """Import every pending template (of one tenant when given), each in its own transaction."""
        query = select(TaskTemplate).where(TaskTemplate.import_state == "pending").order_by(TaskTemplate.id)
        if tenant_id is not None:
            query = query.where(TaskTemplate.tenant_id == tenant_id)
        pending = [
            (row.id, row.tenant_id, row.code, dict(row.source_git_info or {}))
            for row in await self.session.scalars(query)
        ]
        await self.session.rollback()
        return [await self.backfill(*template) for template in pending]

    async def backfill(self, template_id: int, tenant_id: uuid.UUID, code: str, info: dict[str, Any]) -> Outcome:
        """Import one pending template from its recorded source; a reason instead when it cannot be."""
        try:
            digest = await self._import(template_id, tenant_id, info)
        except (NotFound, Conflict, InvalidInput, Upstream) as exc:
            await self.session.rollback()
            return Outcome(template_id, tenant_id, code, reason=str(exc))
        return Outcome(template_id, tenant_id, code, digest=str(digest))

    async def _import(self, template_id: int, tenant_id: uuid.UUID, info: dict[str, Any]) -> Digest:
        legacy = info.get("legacy") or {}
        repository_id, path = info.get("repository_id"), info.get("original_path")
        if repository_id is None:
            raise InvalidInput("no repository is recorded (the legacy template had no repository_id)")
        if not path or "entry_file" not in legacy:
            raise InvalidInput("no original_path or legacy entry_file is recorded to import from")
        script_type = legacy.get("script_type")
        if script_type not in SCRIPT_TYPES:
            raise InvalidInput(f"script_type {script_type!r} is not one of {', '.join(SCRIPT_TYPES)}")
        parameters = convert_parameters(legacy.get("parameters"))
        entry_file = await self._entry_file(tenant_id, int(repository_id), path, legacy["entry_file"], script_type)
        source = await self.importer.locate(tenant_id, int(repository_id), path, entry_file)
        stored = await self.importer.store_content(source)
        recorded = {**source.snapshot_info, "legacy": legacy}

        async def write(digest: Digest) -> None:
            await self._write(template_id, digest, recorded, script_type, entry_file, parameters)

        await self.importer.commit_version(source, stored, write)
        return stored.digest

    async def _entry_file(
        self, tenant_id: uuid.UUID, repository_id: int, path: str, legacy_entry: str, script_type: str
    ) -> str:
        repository = await self.session.scalar(
            select(GitRepository).where(GitRepository.id == repository_id, GitRepository.tenant_id == tenant_id)
        )
        if repository is None:
            raise NotFound(f"repository {repository_id} no longer exists")
        url, branch, sealed = repository.url, repository.branch, repository.credentials
        await self.session.rollback()  # hold no transaction across the network
        try:
            check_remote_url(url, self.importer.mirrors.options.allowed_schemes)
        except InvalidInput as exc:
            raise InvalidInput(f"repository {repository_id}: {exc}") from None
        head = self._heads.get(repository_id)
        if head is None:
            try:
                credentials = self.importer.box.open(sealed) if sealed is not None else None
                head = await self.importer.mirrors.fetch(tenant_id, repository_id, Remote(url, branch, credentials))
            except (InvalidInput, Upstream) as exc:
                head = exc
            self._heads[repository_id] = head
        if isinstance(head, AppError):
            raise head
        return await self.importer.mirrors.pool.run(
            tenant_id, self._entry_at, tenant_id, repository_id, head, path, legacy_entry, script_type
        )

    def _entry_at(
        self, tenant_id: uuid.UUID, repository_id: int, commit: str, path: str, legacy_entry: str, script_type: str
    ) -> str:
        """A file names itself; a directory holds the legacy entry file (relative to it) or, for Ansible, a
        playbook by the scan's names."""
        try:
            where = normalize_repo_path(path)
        except SnapshotRefused as exc:
            raise InvalidInput(str(exc)) from None
        with git.Repo(self.importer.mirrors.path(tenant_id, repository_id)) as repo:
            tree = repo.commit(commit).tree
            try:
                found = tree / where if where else tree
            except KeyError:
                raise InvalidInput(f"path {where!r} no longer exists at the branch head ({commit[:12]})") from None
            kind = found.type
            names = {item.name for item in found.blobs} if kind == "tree" else set()
        if kind == "blob":
            return PurePosixPath(where).name
        if kind != "tree":
            raise InvalidInput(f"{where!r} is a Git submodule; submodules cannot be imported")
        try:
            entry = normalize_repo_path(legacy_entry)
        except SnapshotRefused:
            entry = ""
        if not where or not entry.startswith(where + "/"):
            relative = "" if entry == where else entry  # an entry outside the directory is taken as relative to it
        else:
            relative = entry[len(where) + 1 :]
        if relative:
            return relative
        playbook = next((name for name in PLAYBOOKS if name in names), None)
        if script_type == "ansible" and playbook is not None:
            return playbook
        raise InvalidInput(
            f"{where!r} is a directory and the legacy entry_file {legacy_entry!r} names no file in "
            "it: point source_git_info.original_path at the script"
        )

    async def _write(
        self,
        template_id: int,
        digest: Digest,
        recorded: dict[str, Any],
        script_type: str,
        entry_file: str,
        parameters: list[dict[str, Any]],
    ) -> None:
        template = await self.session.scalar(
            select(TaskTemplate).where(TaskTemplate.id == template_id).with_for_update()
        )
        if template is None or template.import_state != "pending":
            raise Conflict(f"template {template_id} was deleted or imported by someone else meanwhile")
        number = await self.session.scalar(
            select(func.max(TemplateVersion.version)).where(TemplateVersion.template_id == template_id)
        )
        version = TemplateVersion(
            template_id=template_id,
            version=(number or 0) + 1,
            digest=digest,
            script_type=script_type,
            entry_file=entry_file,
            parameters=parameters,
            source=recorded,
        )
        self.session.add(version)
        await self.session.flush()
        template.current_version_id, template.import_state = version.id, "imported"
        template.source_git_info, template.updated_at = recorded, datetime.now(UTC)
        await self.session.flush()
