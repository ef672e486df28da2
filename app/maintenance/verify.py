"""Verify (DESIGN §6): re-read blobs and prove they still hold what their rows record.

Rows are read page by page on the event loop and handed to `storage.verify.check_blobs`, which runs in a thread
with `concurrency` checks at once; the generator of rows asks the loop for the next page when it needs one, and
outcomes are recorded on the rows (`verified_at`, `verify_outcome`, `verify_detail`) a page at a time. A full run
also lists the bucket for objects that no row names. Rows without an object and objects without a row are
ignored while younger than the grace: an import in flight writes the row first and the object next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob
from app.maintenance.listing import blob_pages, older_than
from app.maintenance.progress import Progress, Silent
from app.maintenance.repair import Repairer
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.verify import Check, Expected, Outcome, check_blobs

PAGE = 500
LISTED = 1000
"""Problems and orphans named in a report (the counts are always complete)."""
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class VerifyOptions:
    digest: Digest | None = None
    """Only this blob."""
    sample: int | None = None
    """Only this many blobs, chosen at random."""
    grace: float = 3600.0
    repair: bool = False
    concurrency: int = 4

    @property
    def scope(self) -> str:
        return "digest" if self.digest else "sample" if self.sample is not None else "all"


@dataclass
class VerifyReport:
    scope: str
    examined: int = 0
    ok: int = 0
    missing: int = 0
    corrupt: int = 0
    size_mismatch: int = 0
    in_flight: int = 0
    """Rows without an object that are younger than the grace: not judged."""
    orphans: int = 0
    """Objects older than the grace that no row names (GC removes them)."""
    repaired: int = 0
    not_repaired: int = 0
    bytes_read: int = 0
    duration_seconds: float = 0.0
    megabytes_per_second: float = 0.0
    problems: list[dict[str, Any]] = field(default_factory=list)
    """{digest, outcome, detail[, repaired, repair]} of each blob that is not ok (up to LISTED)."""
    orphan_digests: list[str] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        return self.missing + self.corrupt + self.size_mismatch + self.orphans - self.repaired == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "all_ok": self.all_ok}

    def count(self, outcome: Outcome) -> None:
        name = outcome.value.replace("-", "_")
        setattr(self, name, getattr(self, name) + 1)


class Verifier:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], store: BlobStore, options: VerifyOptions,
                 repairer: Repairer | None = None, progress: Progress | None = None) -> None:  # fmt: skip
        self.sessions = sessions
        self.store = store
        self.options = options
        self.repairer = repairer
        self.progress = progress or Silent()

    async def run(self) -> VerifyReport:
        started = time.monotonic()
        report = VerifyReport(scope=self.options.scope)
        total = await self._total()
        self.progress.phase("blobs", total)
        loop = asyncio.get_running_loop()

        def on_loop(work: Coroutine[Any, Any, ResultT]) -> ResultT:
            return asyncio.run_coroutine_threadsafe(work, loop).result()

        checks = await asyncio.to_thread(self._check_all, on_loop)
        problems = [check for check in checks if check.outcome is not Outcome.OK]
        await self._judge(problems, report)
        report.examined = len(checks)
        report.ok = len(checks) - len(problems)
        report.bytes_read = sum(check.zst_bytes for check in checks)
        if self.options.scope == "all":
            await self._find_orphans(report)
        report.duration_seconds = round(time.monotonic() - started, 3)
        if report.duration_seconds > 0:
            report.megabytes_per_second = round(report.bytes_read / 1e6 / report.duration_seconds, 1)
        return report

    async def _total(self) -> int:
        if self.options.digest is not None:
            return 1
        async with self.sessions() as session:
            count = int(await session.scalar(select(func.count()).select_from(Blob)) or 0)
        return count if self.options.sample is None else min(count, self.options.sample)

    def _check_all(self, on_loop: Callable[[Coroutine[Any, Any, Any]], Any]) -> list[Check]:
        """In a thread: every check of the scope, recording each page of outcomes as it completes."""
        done: list[Check] = []
        unrecorded: list[Check] = []
        for check in check_blobs(self.store, self._rows(on_loop), concurrency=self.options.concurrency):
            done.append(check)
            unrecorded.append(check)
            self.progress.advance(1, check.zst_bytes)
            if len(unrecorded) >= PAGE:
                on_loop(self._record(unrecorded))
                unrecorded = []
        on_loop(self._record(unrecorded))
        return done

    def _rows(self, on_loop: Callable[[Coroutine[Any, Any, Any]], Any]) -> Iterator[Expected]:
        after = ""
        while True:
            page: list[Expected] = on_loop(self._page(after))
            yield from page
            if len(page) < PAGE or self.options.scope != "all":
                return
            after = page[-1].digest.hex

    async def _page(self, after: str) -> list[Expected]:
        query = select(Blob.digest, Blob.zst_size, Blob.zst_sha256, Blob.tar_size)
        if self.options.digest is not None:
            query = query.where(Blob.digest == self.options.digest.hex)
        elif self.options.sample is not None:
            query = query.order_by(func.random()).limit(self.options.sample)
        else:
            query = query.where(Blob.digest > after).order_by(Blob.digest).limit(PAGE)
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            Expected(Digest(digest), zst_size, zst_sha256, tar_size) for digest, zst_size, zst_sha256, tar_size in rows
        ]

    async def _record(self, checks: list[Check]) -> None:
        """Outcomes on the rows; a `missing` of a row younger than the grace is not recorded (see `_judge`)."""
        if not checks:
            return
        young = await self._young({check.digest.hex for check in checks if check.outcome is Outcome.MISSING})
        values = [
            {"key": check.digest.hex, "outcome": check.outcome.value, "detail": check.detail or None}
            for check in checks
            if check.digest.hex not in young
        ]
        if not values:
            return
        table = cast("Table", Blob.__table__)
        blobs = table.c
        async with self.sessions() as session, session.begin():
            connection = await session.connection()
            await connection.execute(
                update(table)
                .where(blobs.digest == bindparam("key"))
                .values(verified_at=func.now(), verify_outcome=bindparam("outcome"), verify_detail=bindparam("detail")),
                values,
            )

    async def _young(self, digests: set[str]) -> set[str]:
        if not digests:
            return set()
        cutoff = datetime.now(UTC) - timedelta(seconds=self.options.grace)
        async with self.sessions() as session:
            rows = await session.scalars(select(Blob.digest).where(Blob.digest.in_(digests), Blob.touched_at >= cutoff))
            return set(rows)

    async def _judge(self, problems: list[Check], report: VerifyReport) -> None:
        young = await self._young({check.digest.hex for check in problems if check.outcome is Outcome.MISSING})
        for check in sorted(problems, key=lambda check: check.digest):
            if check.digest.hex in young:
                report.in_flight += 1
                continue
            report.count(check.outcome)
            entry: dict[str, Any] = {
                "digest": str(check.digest),
                "outcome": check.outcome.value,
                "detail": check.detail,
            }
            if self.options.repair and self.repairer is not None:
                repaired, how = await self.repairer.repair(check.digest.hex)
                entry.update(repaired=repaired, repair=how)
                if repaired:
                    report.repaired += 1
                    await self._record_repaired(check.digest)
                else:
                    report.not_repaired += 1
            if len(report.problems) < LISTED:
                report.problems.append(entry)

    async def _record_repaired(self, digest: Digest) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Blob)
                .where(Blob.digest == digest.hex)
                .values(verified_at=func.now(), verify_outcome=Outcome.OK.value, verify_detail="repaired")
            )

    async def _find_orphans(self, report: VerifyReport) -> None:
        self.progress.phase("orphans")
        cutoff = older_than(self.options.grace)
        async with self.sessions() as session:
            async for page in blob_pages(self.store):
                old = [item.digest.hex for item in page if item.last_modified < cutoff]
                known = set(await session.scalars(select(Blob.digest).where(Blob.digest.in_(old)))) if old else set()
                await session.rollback()
                orphans = sorted(digest for digest in old if digest not in known)
                report.orphans += len(orphans)
                room = LISTED - len(report.orphan_digests)
                report.orphan_digests += [f"sha256:{digest}" for digest in orphans[: max(room, 0)]]
                self.progress.advance(len(page), sum(item.size for item in page))
