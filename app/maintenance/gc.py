"""Online garbage collection (DESIGN §6): retention, then mark, then sweep under row locks, then orphan objects.

1. Retention deletes version rows that are no longer retained and finished tasks past their days.
2. Mark: blob rows that nothing references (`references.unreferenced`) and that nobody touched within the grace.
3. Sweep, in batches: lock the candidates' rows (skipping rows an import or a task is holding right now), check
   again in a new statement (which sees everything committed while we waited), delete their rows, delete the
   objects with one DeleteObjects request while the row locks hold, and commit even when that request fails.
   An import touches the row in the transaction that inserts its version, and inserting a version locks the row
   too (its foreign key), so an import either commits before our check (and the blob is kept) or finds the row
   gone afterwards (and stores the blob again).
4. Orphans: objects with no row, older than the grace, each checked and deleted under the digest's advisory lock
   (see `app.services.blobs`); and multipart uploads started before the grace and never finished, aborted.

Work scales with the number of blobs: nothing reads an object's bytes. A dry run changes nothing and reports what
a real run would delete now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, delete, func, literal, select
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob
from app.maintenance import references, retention
from app.maintenance.listing import blob_pages, older_than
from app.maintenance.progress import Progress, Silent
from app.maintenance.to_the_end import to_the_end
from app.services.blobs import LOCK_NAMESPACE, digest_lock_key
from storage.blobstore import DELETE_BATCH, BlobStore
from storage.digest import Digest
from storage.errors import StorageError

log = logging.getLogger("ahop.maintenance")

LISTED_DIGESTS = 10_000
"""Digests named in a report (the counts are always complete)."""


@dataclass(frozen=True)
class GcOptions:
    grace: float = 3600.0
    """Seconds a blob row must stay untouched, and an orphan object unlisted, before it can go."""
    keep_versions: int = 10
    task_retention: timedelta = timedelta(days=30)
    dry_run: bool = False
    batch: int = 500
    """Blob rows locked and deleted per transaction (and per DeleteObjects request)."""


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    blobs_examined: int = 0
    candidates: int = 0
    candidate_bytes: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_in_use: int = 0
    """Candidates that an import or a task took while the run went on: kept."""
    orphans_found: int = 0
    orphans_removed: int = 0
    orphan_bytes_freed: int = 0
    orphan_bytes: int = 0
    """The size of the orphans found (removed or, in a dry run, that would be)."""
    stale_uploads: int = 0
    """Multipart uploads started before the grace and never finished (a crashed import of a large blob)."""
    uploads_aborted: int = 0
    versions_pruned: int = 0
    tasks_pruned: int = 0
    runs_pruned: int = 0
    duration_seconds: float = 0.0
    retention_seconds: float = 0.0
    mark_seconds: float = 0.0
    """Finding the candidates: one query over the blob rows."""
    sweep_seconds: float = 0.0
    """Deleting the candidates (objects and rows), batch by batch, under their row locks."""
    orphans_seconds: float = 0.0
    """Listing the bucket, deleting objects without rows and aborting stale multipart uploads."""
    candidate_digests: list[str] = field(default_factory=list)
    """The candidates (up to LISTED_DIGESTS), as sha256:<hex>."""
    deleted_digests: list[str] = field(default_factory=list)
    orphan_digests: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class GarbageCollector:
    sessions: async_sessionmaker[AsyncSession]
    store: BlobStore
    options: GcOptions
    progress: Progress = field(default_factory=Silent)
    report: GcReport = field(init=False)
    """Filled in as the run goes: what it did so far when it fails or is stopped."""

    def __post_init__(self) -> None:
        self.report = GcReport(dry_run=self.options.dry_run, grace_seconds=self.options.grace)

    async def run(self) -> GcReport:
        """One collection (a collector runs once). The caller holds the GC lock (`app.maintenance.runs.GcLock`)."""
        started = time.monotonic()
        report = self.report
        self.progress.phase("retention")
        pruned = await retention.prune(
            self.sessions,
            keep=self.options.keep_versions,
            retention=self.options.task_retention,
            dry_run=self.options.dry_run,
        )
        report.versions_pruned, report.tasks_pruned, report.runs_pruned = pruned.versions, pruned.tasks, pruned.runs
        lap = time.monotonic()
        report.retention_seconds = round(lap - started, 3)
        candidates = await self._mark(report)
        report.mark_seconds, lap = round(time.monotonic() - lap, 3), time.monotonic()
        if not self.options.dry_run:
            await self._sweep(candidates, report)
        report.sweep_seconds, lap = round(time.monotonic() - lap, 3), time.monotonic()
        await self._sweep_orphans(report)
        await self._abort_stale_uploads(report)
        report.orphans_seconds = round(time.monotonic() - lap, 3)
        report.duration_seconds = round(time.monotonic() - started, 3)
        return report

    async def _mark(self, report: GcReport) -> list[tuple[Digest, int]]:
        self.progress.phase("mark")
        async with self.sessions() as session:
            report.blobs_examined = int(await session.scalar(select(func.count()).select_from(Blob)) or 0)
            rows = (
                await session.execute(
                    select(Blob.digest, Blob.zst_size)
                    .where(
                        Blob.touched_at < func.now() - self._grace(),
                        references.unreferenced(self.options.keep_versions),
                    )
                    .order_by(Blob.digest)
                )
            ).all()
        candidates = [(digest, size) for digest, size in rows]
        report.candidates = len(candidates)
        report.candidate_bytes = sum(size for _, size in candidates)
        report.candidate_digests = [str(digest) for digest, _ in candidates[:LISTED_DIGESTS]]
        self.progress.advance(report.blobs_examined)
        return candidates

    def _grace(self) -> Any:
        return literal(timedelta(seconds=self.options.grace))

    def _still_collectable(self) -> ColumnElement[bool]:
        """The check made just before a row goes: untouched within the grace, no version row, no unfinished task."""
        return and_(Blob.touched_at < func.now() - self._grace(), references.unreferenced_now())

    async def _sweep(self, candidates: list[tuple[Digest, int]], report: GcReport) -> None:
        self.progress.phase("sweep", len(candidates))
        step = min(self.options.batch, DELETE_BATCH)
        async with self.sessions() as session:
            for start in range(0, len(candidates), step):
                batch = [digest for digest, _ in candidates[start : start + step]]
                deleted, freed = report.deleted, report.bytes_freed
                await self._delete_batch(session, batch, report)
                report.kept_in_use += len(batch) - (report.deleted - deleted)
                self.progress.advance(len(batch), report.bytes_freed - freed)

    async def _delete_batch(self, session: AsyncSession, batch: list[Digest], report: GcReport) -> None:
        """Delete the rows first and the objects while their row locks are still held, then commit whatever
        became of the objects: an object left behind is an orphan that a later sweep removes, whereas a row whose
        object is gone would be handed out by the tree cache. An import waiting on a row lock finds the row gone
        once we commit, and stores its blob again. The report counts the batch once its rows are gone, even when
        the run is being stopped."""
        try:
            confirmed = await self._lock_unreferenced(session, batch)
            if confirmed:
                await session.execute(delete(Blob).where(Blob.digest.in_([digest for digest, _ in confirmed])))
        except BaseException:
            await session.rollback()
            raise
        if not confirmed:
            await session.rollback()
            return
        try:
            await to_the_end(asyncio.to_thread(self.store.delete, [digest for digest, _ in confirmed]))
        finally:
            committed = asyncio.ensure_future(session.commit())
            try:
                await to_the_end(committed)
            except Exception:
                await self._forget_rows_again(confirmed)
                raise
            finally:
                if committed.done() and not committed.cancelled() and committed.exception() is None:
                    self._count_deleted(confirmed, report)

    async def _forget_rows_again(self, deleted: list[tuple[Digest, int]]) -> None:
        """The commit that deletes the rows failed after their objects went: delete them again, in a new session,
        where they are still unreferenced and untouched. What cannot be deleted is logged for `verify --repair`."""
        digests = [digest for digest, _ in deleted]
        try:
            async with self.sessions() as session, session.begin():
                await session.execute(delete(Blob).where(Blob.digest.in_(digests), self._still_collectable()))
        except Exception:
            log.error(
                "GC deleted the objects of %d blobs but could not delete their rows; run `ahop verify "
                "--repair` once the database is back: %s",
                len(digests),
                ", ".join(digest.hex for digest in digests),
            )
            raise

    @staticmethod
    def _count_deleted(deleted: list[tuple[Digest, int]], report: GcReport) -> None:
        report.deleted += len(deleted)
        report.bytes_freed += sum(size for _, size in deleted)
        room = LISTED_DIGESTS - len(report.deleted_digests)
        report.deleted_digests += [str(digest) for digest, _ in deleted[: max(room, 0)]]

    async def _lock_unreferenced(self, session: AsyncSession, batch: list[Digest]) -> list[tuple[Digest, int]]:
        """Lock the batch's rows (skipping rows an import or a task holds right now), then keep those that are
        still unreferenced and untouched: a new statement, which sees everything committed while we waited."""
        locked = list(
            await session.scalars(select(Blob.digest).where(Blob.digest.in_(batch)).with_for_update(skip_locked=True))
        )
        if not locked:
            return []
        rows = await session.execute(
            select(Blob.digest, Blob.zst_size).where(Blob.digest.in_(locked), self._still_collectable())
        )
        return [(digest, size) for digest, size in rows.all()]

    async def _sweep_orphans(self, report: GcReport) -> None:
        """Objects without a row, listed page by page; deleted unless a row appeared meanwhile."""
        self.progress.phase("orphans")
        cutoff = older_than(self.options.grace)
        async with self.sessions() as session:
            async for page in blob_pages(self.store):
                old = {item.digest: item.size for item in page if item.last_modified < cutoff}
                orphans = await _without_rows(session, old)
                await session.rollback()
                if orphans and not self.options.dry_run:
                    orphans = await self._delete_orphans(session, orphans)
                report.orphans_found += len(orphans)
                report.orphan_bytes += sum(old[digest] for digest in orphans)
                if not self.options.dry_run:
                    report.orphans_removed += len(orphans)
                    report.orphan_bytes_freed += sum(old[digest] for digest in orphans)
                room = LISTED_DIGESTS - len(report.orphan_digests)
                report.orphan_digests += [str(digest) for digest in orphans[: max(room, 0)]]
                self.progress.advance(len(page), sum(item.size for item in page))

    async def _abort_stale_uploads(self, report: GcReport) -> None:
        """Abort multipart uploads older than the grace: their parts take space until someone does."""
        cutoff = older_than(self.options.grace)
        pending = await asyncio.to_thread(lambda: list(self.store.list_pending_uploads()))
        for upload in pending:
            if upload.initiated >= cutoff:
                continue
            report.stale_uploads += 1
            if self.options.dry_run:
                continue
            try:
                await asyncio.to_thread(self.store.abort_upload, upload)
            except StorageError as exc:  # the next run tries again
                log.warning("could not abort the multipart upload %s of %s: %s", upload.upload_id, upload.key, exc)
                continue
            report.uploads_aborted += 1

    async def _delete_orphans(self, session: AsyncSession, orphans: list[Digest]) -> list[Digest]:
        async with session.begin():
            keys = sorted({digest_lock_key(digest) for digest in orphans})
            await session.execute(
                select(func.count()).select_from(
                    select(
                        func.pg_advisory_xact_lock(LOCK_NAMESPACE, func.unnest(array(keys, type_=Integer)))
                    ).subquery()
                )
            )
            still = await _without_rows(session, dict.fromkeys(orphans, 0))
            if still:
                await to_the_end(asyncio.to_thread(self.store.delete, still))
        return still


async def _without_rows(session: AsyncSession, digests: dict[Digest, int]) -> list[Digest]:
    if not digests:
        return []
    present = set(await session.scalars(select(Blob.digest).where(Blob.digest.in_(list(digests)))))
    return sorted(digest for digest in digests if digest not in present)
