"""Importing a template (DESIGN §3, §6): branch head → Git tree → canonical blob in S3 → template and version.

The expensive part (fetch, pack, upload) runs outside any transaction; the template and its version are written
in one short transaction that also touches the blob row, so a concurrent GC cannot take a blob from under it.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import git
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, GitRepository, TaskTemplate, TemplateVersion
from app.errors import Conflict, InvalidInput, Unavailable
from app.git.mirror import Mirrors, Remote
from app.metrics import ApiMetrics
from app.scan.schema import ScannedSchema, read_schema
from app.services import blobs
from app.services.credentials import CredentialBox
from storage.blobstore import BlobInfo, BlobStore
from storage.canonical import Limits
from storage.digest import Digest
from storage.errors import BlobNotFound, SnapshotRefused, StorageError, StorageUnavailable
from storage.snapshot import Snapshot, pack
from storage.trees import GitTree, locate_git_path

_GC_RACE_RETRIES = 3
PARAMETERS_SCANNED, PARAMETERS_MANUAL = "scanned", "manual"
"""Where a version's parameter schema came from (`TemplateVersion.parameters_source`)."""
_KEPT_DISAPPEARING = "the blob kept disappearing while importing (is a GC with a very short grace running?); try again"
WrittenT = TypeVar("WrittenT")

log = logging.getLogger("ahop.imports")


@dataclass(frozen=True)
class TemplateSpec:
    """The seed's import body, plus where and how often its tasks run (pool, max_attempts, retry_on)."""

    name: str
    code: str
    script_type: str
    entry_file: str
    repository_id: int
    original_path: str
    description: str = ""
    parameters: list[dict[str, Any]] | None = None
    """None: the schema the scan reads for this path and entry (`app.scan.schema`); a list replaces it."""
    timeout: int = 3600
    pool: str = "default"
    max_attempts: int = 1
    retry_on: list[str] = field(default_factory=list)
    execution: str | None = None
    """None: `targets` for an Ansible template, `worker` for shell and python (`default_execution`)."""
    require_sudo: bool = False
    forks: int = 5
    max_fail_percentage: int = 0


def default_execution(script_type: str) -> str:
    """Where a template runs unless its import says: a playbook addresses hosts, a script its own machine."""
    return "targets" if script_type == "ansible" else "worker"


@dataclass(frozen=True)
class Imported:
    template: TaskTemplate
    version: TemplateVersion
    blob: Blob
    packed: bool
    """False when the tree → digest cache answered and nothing was packed."""


@dataclass(frozen=True)
class Stored:
    """Content whose blob row and object exist: `info` is the stored object's figures (None on a cache hit)."""

    digest: Digest
    info: BlobInfo | None
    packed: bool


@dataclass(frozen=True)
class Source:
    """Where the content is: enough to look it up in the tree → digest cache, and to pack it on a miss."""

    snapshot_info: dict[str, Any]
    content_key: str
    mirror: Path
    is_file: bool
    """The content is a single file (`original_path` names a blob), not a directory."""
    tenant_id: uuid.UUID
    """Whose mirror it is: reading it is that tenant's git work (`app.git.pool`)."""

    def tree(self, repo: git.Repo) -> GitTree:
        """The content in `repo`, this source's mirror opened by the caller (who closes it: `app.git.processes`)."""
        return GitTree(repo, self.snapshot_info["commit_sha"], self.snapshot_info["original_path"])

    def read_schema(self, script_type: str, entry_file: str) -> ScannedSchema:
        """The parameter schema a scan shows for this content with this entry (blocking: call it in a thread)."""
        with git.Repo(self.mirror) as repo:
            return read_schema(
                repo,
                self.snapshot_info["tree_id"],
                self.snapshot_info["original_path"],
                entry_file,
                script_type,
                is_file=self.is_file,
            )


@dataclass(eq=False)
class Importer:
    """Imports templates and their new versions; counts them into `metrics` when given."""

    session: AsyncSession
    mirrors: Mirrors
    box: CredentialBox
    store: BlobStore
    limits: Limits
    work_dir: Path
    _: KW_ONLY
    metrics: ApiMetrics | None = None

    async def import_template(self, tenant_id: uuid.UUID, spec: TemplateSpec, created_by: uuid.UUID | None) -> Imported:
        taken = await self.session.scalar(
            select(TaskTemplate.id).where(TaskTemplate.tenant_id == tenant_id, TaskTemplate.code == spec.code)
        )
        if taken is not None:
            raise Conflict(f"a template with code {spec.code!r} already exists")
        source = await self.locate(tenant_id, spec.repository_id, spec.original_path, spec.entry_file)
        if spec.parameters is None:
            schema = await self.mirrors.pool.run(tenant_id, source.read_schema, spec.script_type, spec.entry_file)
            parameters, parameters_source = schema.parameters_json(), PARAMETERS_SCANNED
        else:
            parameters, parameters_source = spec.parameters, PARAMETERS_MANUAL
        stored = await self.store_content(source)

        async def insert(digest: Digest) -> tuple[TaskTemplate, TemplateVersion]:
            return await self._insert(tenant_id, spec, source, digest, created_by, parameters, parameters_source)

        try:
            (template, version), blob, packed = await self.commit_version(source, stored, insert)
        except DatabaseIntegrityError as exc:
            if "task_templates_code_unique" not in str(exc.orig):
                raise
            raise Conflict(f"a template with code {spec.code!r} already exists") from exc
        return Imported(template, version, blob, packed)

    async def locate(self, tenant_id: uuid.UUID, repository_id: int, original_path: str, entry_file: str) -> Source:
        """Fetch the repository's branch and find `original_path` at its head, with `entry_file` among its files."""
        await self._repository(tenant_id, repository_id)
        await self.session.rollback()
        fields: dict[str, Any] = {}

        async def read_remote() -> Remote:
            # Read again once the mirror's lock is held: a repository deleted meanwhile is not fetched again.
            repository = await self._repository(tenant_id, repository_id)
            credentials = self.box.open(repository.credentials) if repository.credentials is not None else None
            fields.update(id=repository.id, name=repository.name, url=repository.url, branch=repository.branch)
            await self.session.rollback()  # hold no transaction across the network
            return Remote(fields["url"], fields["branch"], credentials)

        commit = await self.mirrors.fetch_current(tenant_id, repository_id, read_remote)
        return await self.mirrors.pool.run(
            tenant_id, self._resolve, tenant_id, fields, commit, original_path, entry_file
        )

    async def _repository(self, tenant_id: uuid.UUID, repository_id: int) -> GitRepository:
        row = await self.session.scalar(
            select(GitRepository).where(GitRepository.id == repository_id, GitRepository.tenant_id == tenant_id)
        )
        if row is None:
            raise InvalidInput(f"no repository {repository_id}", {"repository_id": "no such repository"})
        return row

    def _resolve(
        self, tenant_id: uuid.UUID, repository: dict[str, Any], commit: str, path: str, entry_file: str
    ) -> Source:
        """Where `path` is at `commit`, with the entry file checked; one `git ls-tree`, no listing of the tree."""
        mirror = self.mirrors.path(tenant_id, repository["id"])
        try:
            with git.Repo(mirror) as repo:
                located = locate_git_path(repo, commit, path, entry_file)
        except SnapshotRefused as exc:
            field = "original_path" if exc.missing_member is None else "entry_file"
            raise InvalidInput(str(exc), {field: str(exc)}) from exc
        original_path = located.path
        info = {
            "repository_id": repository["id"],
            "repository_name": repository["name"],
            "repository_url": repository["url"],
            "branch": repository["branch"],
            "commit_sha": commit,
            "tree_id": located.object_id,
            "original_path": original_path,
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        return Source(info, located.content_key, mirror, is_file=located.kind == "blob", tenant_id=tenant_id)

    def _pack(self, source: Source) -> tuple[Snapshot, BinaryIO]:
        """Pack into a spooled file: in memory up to the size the store sends in one request, on disk beyond."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spooled = tempfile.SpooledTemporaryFile(max_size=self.store.multipart_threshold, dir=str(self.work_dir))  # noqa: SIM115 -- closed by store_content once uploaded
        out = cast("BinaryIO", spooled)
        try:
            with git.Repo(source.mirror) as repo:
                what = source.snapshot_info["original_path"] or "."
                snapshot = pack(source.tree(repo), out, what=what, limits=self.limits)
        except BaseException:
            out.close()
            raise
        return snapshot, out

    async def store_content(self, source: Source, *, use_cache: bool = True) -> Stored:
        """The digest of the content, its blob row upserted and its object in S3. Skips packing on a cache hit."""
        digest = await blobs.cached_digest(self.session, source.content_key) if use_cache else None
        await self.session.rollback()
        if digest is not None:
            return Stored(digest, None, packed=False)
        try:
            snapshot, blob_file = await self.mirrors.pool.run(source.tenant_id, self._pack, source)
        except SnapshotRefused as exc:  # including LimitExceeded, whose message gives the figures
            raise InvalidInput(str(exc), {"original_path": str(exc)}) from exc
        try:
            uploaded, stored = await self._upload(snapshot, blob_file)
        finally:
            blob_file.close()
        if not uploaded and self.metrics is not None:
            self.metrics.deduplicated()
        return Stored(snapshot.digest, stored, packed=True)

    async def _still_stored(self, digest: Digest) -> bool:
        """Whether the object of a cached digest is still there (one HEAD, made only when a new version is about to
        use it): if something removed it behind the row's back, the content is packed and stored again instead of
        handing out a blob that is gone. When S3 cannot answer, the row is trusted."""
        try:
            exists = await asyncio.to_thread(self.store.exists, digest)
        except StorageError:
            return True
        if not exists:
            log.warning("blob %s is recorded but its object is gone: packing it again", digest)
        return exists

    async def _upload(self, snapshot: Snapshot, blob_file: BinaryIO) -> tuple[bool, BlobInfo]:
        """Upsert the blob row, then store the object unless it is there. A GC with a grace shorter than an import
        may delete the object between our write and our look at it (BlobNotFound): then both again."""
        for _ in range(_GC_RACE_RETRIES):
            inserted = await blobs.upsert_blob(self.session, snapshot)
            await self.session.commit()
            try:
                return await asyncio.to_thread(
                    self.store.put_if_absent,
                    snapshot.digest,
                    blob_file,
                    tar_size=snapshot.tar_size,
                    files=snapshot.files,
                    zst_sha256=snapshot.zst_sha256,
                )
            except BlobNotFound:
                continue
            except StorageUnavailable as exc:
                if inserted:
                    await blobs.forget_unused_blob(self.session, snapshot.digest)
                    await self.session.commit()
                raise Unavailable(f"S3 is unavailable, nothing was imported: {exc}") from exc
        raise Unavailable(_KEPT_DISAPPEARING)

    async def commit_version(
        self, source: Source, stored: Stored, write: Callable[[Digest], Awaitable[WrittenT]]
    ) -> tuple[WrittenT, Blob, bool]:
        """Run `write(digest)` in the transaction that touches the blob row (DESIGN §6). If GC freed the blob
        since it was stored or found in the cache, store it again and retry."""
        if not stored.packed and not await self._still_stored(stored.digest):
            stored = await self.store_content(source, use_cache=False)
        for _ in range(_GC_RACE_RETRIES):
            async with self.session.begin():
                blob = await blobs.touch_stored(self.session, stored.digest, stored.info)
                if blob is not None:
                    await blobs.remember_tree(self.session, source.content_key, stored.digest)
                    written = await write(stored.digest)
            if blob is not None:
                if self.metrics is not None:  # counted once committed
                    self.metrics.imported(packed=stored.packed)
                return written, blob, stored.packed
            stored = await self.store_content(source, use_cache=False)
        raise Unavailable(_KEPT_DISAPPEARING)

    async def _insert(
        self,
        tenant_id: uuid.UUID,
        spec: TemplateSpec,
        source: Source,
        digest: Digest,
        created_by: uuid.UUID | None,
        parameters: list[dict[str, Any]],
        parameters_source: str,
    ) -> tuple[TaskTemplate, TemplateVersion]:
        template = TaskTemplate(
            tenant_id=tenant_id,
            code=spec.code,
            name=spec.name,
            description=spec.description,
            timeout=spec.timeout,
            pool=spec.pool,
            max_attempts=spec.max_attempts,
            retry_on=list(spec.retry_on),
            execution=spec.execution or default_execution(spec.script_type),
            require_sudo=spec.require_sudo,
            forks=spec.forks,
            max_fail_percentage=spec.max_fail_percentage,
            source_git_info=source.snapshot_info,
            import_state="pending",
        )
        self.session.add(template)
        await self.session.flush()
        version = TemplateVersion(
            template_id=template.id,
            version=1,
            digest=digest,
            script_type=spec.script_type,
            entry_file=spec.entry_file,
            parameters=parameters,
            parameters_source=parameters_source,
            source=source.snapshot_info,
            created_by=created_by,
        )
        self.session.add(version)
        await self.session.flush()
        template.current_version_id, template.import_state = version.id, "imported"
        await self.session.flush()
        return template, version
