"""Blob rows and the tree → digest cache, in the order DESIGN §6 requires of an import.

An import (1) upserts the blob row, touching `touched_at`; (2) uploads the object if absent; (3) in the transaction
that inserts the version, touches the row again and records the metadata of the object actually stored. A GC
that deletes only rows untouched for its grace period, and locks a row before deleting its object, can then never
delete a blob that a committed version references.

GC also deletes objects that have no row (crashed imports). The upsert holds a shared advisory lock on the digest
until it commits, and that sweep takes the same lock exclusively while it checks for a row and deletes the object:
an import that found the object already stored can therefore never lose it to the sweep.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, TemplateVersion, TreeDigest
from storage.blobstore import BlobInfo
from storage.digest import Digest
from storage.snapshot import Snapshot


async def cached_digest(session: AsyncSession, content_key: str) -> Digest | None:
    """The digest this Git content packed to before, if its blob row still exists."""
    return await session.scalar(
        select(TreeDigest.digest).join(Blob, Blob.digest == TreeDigest.digest).where(TreeDigest.tree_key == content_key)
    )


LOCK_NAMESPACE = 0x61686F70
"""The first key of every per-digest advisory lock ("ahop"); the second is `digest_lock_key(digest)`."""


def digest_lock_key(digest: Digest) -> int:
    """A 32-bit advisory lock key for the digest: its first 8 hex digits, signed. Collisions only make two digests
    wait for each other."""
    value = int(digest.hex[:8], 16)
    return value - (1 << 32) if value >= 1 << 31 else value


async def upsert_blob(session: AsyncSession, snapshot: Snapshot) -> bool:
    """Insert the blob row, or touch the existing one (whose figures stay: the first writer's). True if inserted.

    Takes the digest's advisory lock (shared) until the transaction ends; see the module's docstring."""
    await session.execute(select(func.pg_advisory_xact_lock_shared(LOCK_NAMESPACE, digest_lock_key(snapshot.digest))))
    statement = (
        insert(Blob)
        .values(
            digest=snapshot.digest,
            tar_size=snapshot.tar_size,
            zst_size=snapshot.zst_size,
            zst_sha256=snapshot.zst_sha256,
            files=snapshot.files,
        )
        .on_conflict_do_update(index_elements=[Blob.digest], set_={"touched_at": text("now()")})
        .returning(text("(xmax = 0) AS inserted"))
    )
    return bool(await session.scalar(statement))


async def touch_stored(session: AsyncSession, digest: Digest, stored: BlobInfo | None) -> Blob | None:
    """Touch the row in the version's transaction (with the stored object's figures when known); None if GC took it."""
    values: dict[str, object] = {"touched_at": text("now()"), "state": "stored"}
    if stored is not None:
        values.update(zst_size=stored.zst_size, zst_sha256=stored.zst_sha256)
    row = await session.scalar(update(Blob).where(Blob.digest == digest).values(**values).returning(Blob))
    return row


async def remember_tree(session: AsyncSession, content_key: str, digest: Digest) -> None:
    await session.execute(
        insert(TreeDigest)
        .values(tree_key=content_key, digest=digest)
        .on_conflict_do_nothing(index_elements=["tree_key"])
    )


async def forget_unused_blob(session: AsyncSession, digest: Digest) -> None:
    """Undo our row after a failed upload, unless a version references it by now."""
    referenced = exists().where(TemplateVersion.digest == digest)
    await session.execute(delete(Blob).where(Blob.digest == digest, ~referenced))
