"""Building blocks of the maintenance tests: templates imported through the API, raw objects, blob states."""

from __future__ import annotations

import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import zstandard
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob, Role
from storage.blobstore import BlobInfo, BlobStore
from storage.digest import Digest
from storage.keys import blob_key
from tests.app.conftest import Caller, git
from tests.app.test_templates import add_repository, body, s3_client

Client = AsyncTestClient[Litestar]


async def import_template(
    client: Client,
    caller: Caller,
    origin: Path,
    code: str,
    repository_id: int | None = None,
    path: str = "scripts/disk_cleanup",
) -> dict[str, Any]:
    """Import `path` of `origin` as template `code`; the response's JSON (with `digest` of the current version)."""
    if repository_id is None:
        repository_id = await add_repository(client, caller, origin, name=f"repo-{code}")
    response = await client.post(
        "/api/v1/task-templates",
        json=body(repository_id, code=code, original_path=path, parameters=[]),
        headers=caller[Role.ADMIN],
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def commit_new_content(origin: Path, path: str = "scripts/disk_cleanup") -> None:
    """A new commit that changes the directory's content (so its next import packs a new digest)."""
    (origin / path / "changes.txt").write_text(secrets.token_hex(16))
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "change")


def put_orphan(settings_s3: Any, bucket: str) -> Digest:
    """An object under a blob key that no row names, as a crashed import leaves one."""
    return _put_random_object(settings_s3, bucket).digest


def _random_blob() -> tuple[BlobInfo, bytes]:
    tar = secrets.token_bytes(2048)
    compressed = zstandard.ZstdCompressor().compress(tar)
    info = BlobInfo(
        Digest(hashlib.sha256(tar).hexdigest()), len(compressed), len(tar), 1, hashlib.sha256(compressed).hexdigest()
    )
    return info, compressed


def _put_random_object(settings_s3: Any, bucket: str) -> BlobInfo:
    info, compressed = _random_blob()
    settings_s3.put_object(Bucket=bucket, Key=blob_key(info.digest), Body=compressed, Metadata=info.metadata())
    return info


async def row_without_object(sessions: async_sessionmaker[AsyncSession]) -> str:
    """A blob row touched now whose object is not stored yet and that nothing references: an import in flight,
    between writing its row and finishing its upload."""
    info, _ = _random_blob()
    async with sessions.begin() as session:
        session.add(_row(info, datetime.now(UTC)))
    return str(info.digest)


async def put_unreferenced(
    settings_s3: Any, bucket: str, sessions: async_sessionmaker[AsyncSession], count: int
) -> set[str]:
    """`count` stored blobs with rows untouched for two days that nothing references: GC's to free."""
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: _put_random_object(settings_s3, bucket), range(count)))
    touched = datetime.now(UTC) - timedelta(days=2)
    async with sessions.begin() as session:
        session.add_all(_row(info, touched) for info in infos)
    return {str(info.digest) for info in infos}


def _row(info: BlobInfo, touched: datetime) -> Blob:
    return Blob(
        digest=info.digest,
        tar_size=info.tar_size,
        zst_size=info.zst_size,
        zst_sha256=info.zst_sha256,
        files=info.files,
        touched_at=touched,
        created_at=touched,
    )


def listed(store: BlobStore) -> set[str]:
    """The digests of every object in the store's bucket."""
    return {str(item.digest) for item in store.list_blobs()}


def stored(store: BlobStore, digest: str | Digest) -> bool:
    """Whether an object is stored under the digest's key."""
    return store.exists(digest if isinstance(digest, Digest) else Digest.parse(digest))


async def blob_rows(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return {str(digest) for digest in await session.scalars(select(Blob.digest))}


__all__ = ["Client", "add_repository", "s3_client"]
