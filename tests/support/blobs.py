"""Blob states the maintenance tests start from: orphaned objects, rows without objects, unreferenced blobs,
damaged bytes; and what the bucket and the blob rows hold."""

from __future__ import annotations

import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import zstandard
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob
from app.settings import AppSettings
from storage.blobstore import BlobInfo, BlobStore
from storage.digest import Digest
from storage.keys import blob_key
from tests.support.jobs import blob_figures
from tests.support.s3 import s3_client


def put_orphan(settings_s3: Any, bucket: str) -> Digest:
    """An object under a blob key that no row names, as a crashed import leaves one."""
    return _put_random_object(settings_s3, bucket).digest


def overwrite(settings: AppSettings, digest: str, data: bytes) -> None:
    """Other bytes under the blob's key, with the metadata it had: what a bad disk or a stray writer leaves."""
    s3 = s3_client(settings.s3_location())
    key = blob_key(Digest.parse(digest))
    metadata = s3.head_object(Bucket=settings.s3_bucket, Key=key)["Metadata"]
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=data, Metadata=metadata)


def remove_object(settings: AppSettings, digest: str) -> None:
    """Delete the object under the blob's key behind the server's back, its row left as it was."""
    s3_client(settings.s3_location()).delete_object(Bucket=settings.s3_bucket, Key=blob_key(Digest.parse(digest)))


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
    return Blob(**blob_figures(info), touched_at=touched, created_at=touched)


def listed(store: BlobStore) -> set[str]:
    """The digests of every object in the store's bucket."""
    return {str(item.digest) for item in store.list_blobs()}


def stored(store: BlobStore, digest: str | Digest) -> bool:
    """Whether an object is stored under the digest's key."""
    return store.exists(digest if isinstance(digest, Digest) else Digest.parse(digest))


async def blob_rows(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    """The digests the blob rows name."""
    async with sessions() as session:
        return {str(digest) for digest in await session.scalars(select(Blob.digest))}
