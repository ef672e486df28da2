"""Artifacts: the blobs a tenant's templates reference, their figures, and their bytes.

A download is checked before its first byte goes out: the object is copied to a spool file while its size and
sha256 are compared with the blob's row, and only a match is sent. A client therefore never receives damaged bytes
with a 200 (an answer cannot change its status once the body has started); it gets `Damaged` naming the digest and
the repair instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, TaskTemplate, TemplateVersion
from app.errors import Damaged, InvalidInput, NotFound, Unavailable
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.errors import BlobNotFound, IntegrityError, InvalidDigest, StorageUnavailable

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
    def __init__(self, session: AsyncSession, store: BlobStore, spool_dir: Path) -> None:
        self.session = session
        self.store = store
        self.spool_dir = spool_dir
        """Where downloads are checked before they are sent (the server's own disk, like its imports)."""

    async def get(self, tenant_id: uuid.UUID, digest: Digest) -> ArtifactView:
        """A blob that one of the tenant's template versions references; NotFound otherwise (even if it exists)."""
        rows = await self.session.execute(
            select(
                TaskTemplate.id,
                TaskTemplate.code,
                TemplateVersion.version,
                TaskTemplate.current_version_id,
                TemplateVersion.id,
            )
            .join(TemplateVersion, TemplateVersion.template_id == TaskTemplate.id)
            .where(TaskTemplate.tenant_id == tenant_id, TemplateVersion.digest == digest)
            .order_by(TaskTemplate.id, TemplateVersion.version)
        )
        used_by = [Usage(tid, code, number, current == vid) for tid, code, number, current, vid in rows]
        blob = await self.session.get(Blob, digest)
        if not used_by or blob is None:
            raise NotFound(f"no artifact {digest} among this tenant's templates")
        return ArtifactView(blob, used_by)

    async def stream(self, tenant_id: uuid.UUID, digest: Digest) -> AsyncIterator[bytes]:
        """The blob's compressed bytes, checked to be the tenant's and to match the blob's row before the first byte
        is sent; `Damaged` when the stored object does not, `NotFound` when it is missing."""
        blob = (await self.get(tenant_id, digest)).blob
        expected = (blob.zst_size, blob.zst_sha256)
        await self.session.close()  # no transaction held open while the bytes flow
        spool = await asyncio.to_thread(self._checked_copy, digest, expected)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(spool.read, CHUNK):
                    yield chunk
            finally:
                spool.close()

        return chunks()

    def _checked_copy(self, digest: Digest, expected: tuple[int, str]) -> BinaryIO:
        """An open, unlinked file holding the object's bytes, which match `expected` (size, sha256)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="download-", suffix=".tar.zst", dir=self.spool_dir)
        os.close(handle)
        path = Path(name)
        try:
            try:
                info = self.store.download(digest, path)
            except BlobNotFound as exc:
                raise NotFound(f"the object of {digest} is missing from the store; run `ahop verify --repair`") from exc
            except IntegrityError as exc:
                raise Damaged(
                    f"the stored object of {digest} fails its check ({exc}); run `ahop verify --repair` "
                    f"to store it again from its commit"
                ) from exc
            except StorageUnavailable as exc:
                raise Unavailable(f"S3 is unavailable: {exc}") from exc
            if (info.zst_size, info.zst_sha256) != expected:
                raise Damaged(
                    f"the stored object of {digest} has {info.zst_size} bytes with sha256 {info.zst_sha256}, but its "
                    f"row records {expected[0]} bytes with sha256 {expected[1]}; run `ahop verify --repair` to store "
                    "it again from its commit"
                )
            return path.open("rb")
        finally:
            path.unlink(missing_ok=True)  # the open file stays readable; nothing is left behind on any outcome
