"""Artifacts: the blobs a tenant's templates reference, their figures, and their bytes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, TaskTemplate, TemplateVersion
from app.services.errors import InvalidInput, NotFound, Unavailable
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.errors import BlobNotFound, InvalidDigest, StorageUnavailable

CHUNK = 1 << 20


@dataclass(frozen=True)
class Usage:
    template_id: int
    code: str
    version: int
    current: bool


@dataclass(frozen=True)
class ArtifactView:
    blob: Blob
    used_by: list[Usage]


def parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as exc:
        raise InvalidInput(str(exc), {"digest": "expected sha256:<64 lowercase hex>"}) from exc


class Artifacts:
    def __init__(self, session: AsyncSession, store: BlobStore) -> None:
        self.session = session
        self.store = store

    async def get(self, tenant_id: uuid.UUID, digest: Digest) -> ArtifactView:
        """A blob that one of the tenant's template versions references; NotFound otherwise (even if it exists)."""
        rows = await self.session.execute(
            select(TaskTemplate.id, TaskTemplate.code, TemplateVersion.version, TaskTemplate.current_version_id,
                   TemplateVersion.id)
            .join(TemplateVersion, TemplateVersion.template_id == TaskTemplate.id)
            .where(TaskTemplate.tenant_id == tenant_id, TemplateVersion.digest == digest.hex)
            .order_by(TaskTemplate.id, TemplateVersion.version)
        )  # fmt: skip
        used_by = [Usage(tid, code, number, current == vid) for tid, code, number, current, vid in rows]
        blob = await self.session.get(Blob, digest.hex)
        if not used_by or blob is None:
            raise NotFound(f"no artifact {digest} among this tenant's templates")
        return ArtifactView(blob, used_by)

    async def stream(self, tenant_id: uuid.UUID, digest: Digest) -> AsyncIterator[bytes]:
        """The blob's compressed bytes, checked to be the tenant's before the first byte is sent."""
        await self.get(tenant_id, digest)
        await self.session.close()  # no transaction held open while the bytes flow
        try:
            reader = await asyncio.to_thread(self.store.get, digest)
        except BlobNotFound as exc:
            raise NotFound(f"the object of {digest} is missing from the store; run `ahop verify --repair`") from exc
        except StorageUnavailable as exc:
            raise Unavailable(f"S3 is unavailable: {exc}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(reader.read, CHUNK):
                    yield chunk
            finally:
                reader.close()

        return chunks()
