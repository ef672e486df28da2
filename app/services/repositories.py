"""Git repositories of a tenant: records, their mirrors, and syncing the branch head."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import git
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import GitRepository
from app.errors import NotFound, Upstream
from app.git.mirror import Mirrors, Remote, check_branch
from app.git.urls import check_remote_url
from app.scan.candidates import Candidate
from app.scan.errors import ScanError
from app.scan.gitsource import scan_git
from app.services.credentials import CredentialBox, Credentials
from app.services.named_rows import commit_named
from storage.canonical import Limits


@dataclass(frozen=True)
class RepositoryFields:
    """What a client may set; None leaves a field as it is (on update)."""

    name: str | None = None
    url: str | None = None
    branch: str | None = None
    credentials: Credentials | None = None
    clear_credentials: bool = False


class Repositories:
    def __init__(self, session: AsyncSession, mirrors: Mirrors, box: CredentialBox, limits: Limits) -> None:
        self.session = session
        self.mirrors = mirrors
        self.box = box
        self.limits = limits
        """The import's limits: the scan marks candidates over them."""

    async def get(self, tenant_id: uuid.UUID, repository_id: int) -> GitRepository:
        row = await self.session.scalar(
            select(GitRepository).where(GitRepository.id == repository_id, GitRepository.tenant_id == tenant_id)
        )
        if row is None:
            raise NotFound(f"no repository {repository_id}")
        return row

    async def page(self, tenant_id: uuid.UUID, page: int, page_size: int) -> tuple[list[GitRepository], int]:
        where = GitRepository.tenant_id == tenant_id
        total = await self.session.scalar(select(func.count()).select_from(GitRepository).where(where)) or 0
        rows = await self.session.scalars(
            select(GitRepository)
            .where(where)
            .order_by(GitRepository.id)
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return list(rows), total

    def _apply(self, row: GitRepository, fields: RepositoryFields) -> None:
        if fields.name is not None:
            row.name = fields.name
        if fields.url is not None:
            row.url = check_remote_url(fields.url, self.mirrors.options.allowed_schemes)
        if fields.branch is not None:
            row.branch = check_branch(fields.branch)
        if fields.clear_credentials:
            row.auth_kind, row.credentials = "none", None
        if fields.credentials is not None:
            row.auth_kind, row.credentials = fields.credentials.kind, self.box.seal(fields.credentials)

    async def _commit(self, row: GitRepository) -> GitRepository:
        return await commit_named(self.session, row, "repository")

    async def _check_remote(
        self, tenant_id: uuid.UUID, url: str, branch: str | None, credentials: Credentials | None
    ) -> str:
        """The branch to record, once the remote has answered that it is a repository with that branch (or, with
        no branch given, its default branch): a wrong url or branch is refused now, not at the first sync."""
        url = check_remote_url(url, self.mirrors.options.allowed_schemes)
        if branch is not None:
            check_branch(branch)
        return await self.mirrors.check_remote(tenant_id, url, branch, credentials)

    async def create(self, tenant_id: uuid.UUID, fields: RepositoryFields) -> GitRepository:
        """Add a repository after `git ls-remote` found it; without a branch, the remote's default branch is used."""
        branch = await self._check_remote(tenant_id, fields.url or "", fields.branch, fields.credentials)
        row = GitRepository(tenant_id=tenant_id, name=fields.name, branch=branch)
        self._apply(row, replace(fields, branch=branch))
        self.session.add(row)
        return await self._commit(row)

    async def update(self, tenant_id: uuid.UUID, repository_id: int, fields: RepositoryFields) -> GitRepository:
        """Change what `fields` sets; a new url, branch or credentials are checked against the remote first."""
        row = await self.get(tenant_id, repository_id)
        if fields.url is not None or fields.branch is not None or fields.credentials is not None:
            if fields.credentials is not None:
                credentials: Credentials | None = fields.credentials
            elif row.credentials is not None and not fields.clear_credentials:
                credentials = self.box.open(row.credentials)
            else:
                credentials = None
            url, branch = fields.url or row.url, fields.branch or row.branch
            await self.session.rollback()  # no transaction held open across the network
            await self._check_remote(tenant_id, url, branch, credentials)
            row = await self.get(tenant_id, repository_id)
        self._apply(row, fields)
        row.updated_at = datetime.now(UTC)
        return await self._commit(row)

    async def delete(self, tenant_id: uuid.UUID, repository_id: int) -> None:
        """Delete the record and its mirror. Templates keep working: they hold snapshots, not references.

        The mirror goes under its lock, after a fetch in progress; a sync still waiting for the lock then finds the
        repository gone (404) and does not fetch it again."""
        row = await self.get(tenant_id, repository_id)
        await self.session.delete(row)
        await self.session.commit()
        await self.mirrors.remove(tenant_id, repository_id)

    async def scan(self, tenant_id: uuid.UUID, repository_id: int) -> tuple[str, list[Candidate]]:
        """Sync, then list the template candidates at the branch head (and the commit scanned); a candidate the
        import would refuse for its size or file count says so in its problems."""
        row = await self.sync(tenant_id, repository_id)
        commit = row.head_commit or ""
        await self.session.rollback()

        def scan_mirror() -> list[Candidate]:
            with git.Repo(self.mirrors.path(tenant_id, repository_id)) as repo:
                return scan_git(repo, commit, self.limits)

        try:
            return commit, await self.mirrors.pool.run(tenant_id, scan_mirror)
        except ScanError as exc:
            raise Upstream(f"cannot scan repository {repository_id}: {exc}") from exc

    async def sync(self, tenant_id: uuid.UUID, repository_id: int) -> GitRepository:
        """Fetch the branch into the mirror and record the commit it now points at."""
        await self.get(tenant_id, repository_id)
        await self.session.rollback()

        async def read_remote() -> Remote:
            # Read again once the mirror's lock is held: the repository may have been deleted (NotFound) or
            # changed while this waited.
            row = await self.get(tenant_id, repository_id)
            credentials = self.box.open(row.credentials) if row.credentials is not None else None
            remote = Remote(row.url, row.branch, credentials)
            await self.session.rollback()  # no transaction held open across the network
            return remote

        head = await self.mirrors.fetch_current(tenant_id, repository_id, read_remote)
        row = await self.get(tenant_id, repository_id)
        row.head_commit, row.synced_at = head, datetime.now(UTC)
        await self.session.commit()
        return row


async def remove_stale_mirrors(session_factory: async_sessionmaker[AsyncSession], mirrors: Mirrors) -> int:
    """Remove the mirrors of repositories that no longer exist; answer how many.

    A repository's row goes before its mirror (`Repositories.delete`): a removal cut short by a shutdown or a crash,
    or a tenant deleted with its repositories, leaves a mirror that nothing would remove. The server looks for them
    when it starts. The mirrors are listed before the rows are read: a mirror is created only for a repository
    whose row is already committed, so one being created meanwhile is never taken for stale."""
    on_disk = mirrors.on_disk()
    if not on_disk:
        return 0
    async with session_factory() as session:
        rows = (await session.execute(select(GitRepository.tenant_id, GitRepository.id))).all()
    known = {(str(tenant_id), repository_id) for tenant_id, repository_id in rows}
    stale = [mirror for mirror in on_disk if mirror not in known]
    for tenant_id, repository_id in stale:
        await mirrors.remove(tenant_id, repository_id)
    return len(stale)
