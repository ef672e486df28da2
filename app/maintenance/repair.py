"""Repair (`ahop verify --repair`): put back a missing or damaged blob by packing it again from where its versions
say it came from (repository, commit, path), when this server's mirror still has that commit.

The re-packed content must have the blob's digest (the identity); its compressed bytes may differ from the first
upload's (another zstd version), so the row takes the figures of the object now stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob, TaskTemplate, TemplateVersion
from app.git.mirror import Mirrors
from storage.blobstore import BlobStore
from storage.canonical import Limits
from storage.digest import Digest
from storage.errors import StorageError
from storage.snapshot import Snapshot, pack
from storage.trees import GitTree


@dataclass(frozen=True)
class Origin:
    tenant_id: uuid.UUID
    repository_id: int
    commit_sha: str
    path: str

    def describe(self) -> str:
        return f"repository {self.repository_id} at {self.commit_sha[:12]}, path {self.path or '.'!r}"


@dataclass(eq=False)
class Repairer:
    """Packs a broken blob again from the Git source its template versions recorded."""

    sessions: async_sessionmaker[AsyncSession]
    store: BlobStore
    mirrors: Mirrors
    limits: Limits
    work_dir: Path

    async def repair(self, digest: Digest) -> tuple[bool, str]:
        """(repaired, what was done or why it could not be)."""
        origins = await self._origins(digest)
        if not origins:
            return False, "no template version records where this content came from"
        reasons = []
        for origin in origins:
            mirror = self.mirrors.path(origin.tenant_id, origin.repository_id)
            if not mirror.is_dir():
                reasons.append(f"{origin.describe()}: this server has no mirror of the repository")
                continue
            try:
                snapshot, blob_file = await asyncio.to_thread(self._pack, mirror, origin)
            except (StorageError, git.GitError, ValueError) as exc:
                reasons.append(f"{origin.describe()}: {exc}")
                continue
            try:
                if snapshot.digest != digest:
                    reasons.append(f"{origin.describe()}: packs to {snapshot.digest}, not to this blob's digest")
                    continue
                stored = await asyncio.to_thread(
                    self.store.replace,
                    digest,
                    blob_file,
                    tar_size=snapshot.tar_size,
                    files=snapshot.files,
                    zst_sha256=snapshot.zst_sha256,
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    blob_file.unlink()
            async with self.sessions() as session, session.begin():
                await session.execute(
                    update(Blob)
                    .where(Blob.digest == digest)
                    .values(zst_size=stored.zst_size, zst_sha256=stored.zst_sha256)
                )
            return True, f"packed again from {origin.describe()}"
        return False, "; ".join(reasons)

    async def _origins(self, digest: Digest) -> list[Origin]:
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(TaskTemplate.tenant_id, TemplateVersion.source)
                    .join(TaskTemplate, TaskTemplate.id == TemplateVersion.template_id)
                    .where(TemplateVersion.digest == digest)
                    .order_by(TemplateVersion.created_at.desc())
                )
            ).all()
        origins = [_origin(tenant_id, source) for tenant_id, source in rows]
        return list(dict.fromkeys(origin for origin in origins if origin is not None))

    def _pack(self, mirror: Path, origin: Origin) -> tuple[Snapshot, Path]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix="repair-", suffix=".tar.zst", dir=self.work_dir)
        try:
            with os.fdopen(descriptor, "wb") as out, git.Repo(mirror) as repo:
                snapshot = pack(
                    GitTree(repo, origin.commit_sha, origin.path), out, what=origin.path or ".", limits=self.limits
                )
        except BaseException:
            os.unlink(name)
            raise
        return snapshot, Path(name)


def _origin(tenant_id: uuid.UUID, source: dict[str, Any] | None) -> Origin | None:
    if not source or not source.get("commit_sha") or source.get("repository_id") is None:
        return None
    return Origin(
        tenant_id, int(source["repository_id"]), str(source["commit_sha"]), str(source.get("original_path") or "")
    )
