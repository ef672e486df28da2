"""Verify (DESIGN §6): re-read blobs and prove they still hold what their rows record.

Rows are read page by page on the event loop and handed to `storage.verify.check_blobs`, which runs in a thread
with `concurrency` checks at once; the generator of rows asks the loop for the next page when it needs one, and
each page of outcomes is settled on the loop: problems are judged against the rows as they are now, outcomes are
recorded on the rows (`verified_at`, `verify_outcome`, `verify_detail`) and counted, so memory stays bounded. A
full run also lists the bucket for objects that no row names.

Verify runs beside imports and GC, so a problem is only a problem once the row confirms it: a missing object whose
row nothing references yet and that was touched within the grace is an import in flight (it writes the row first
and the object next); a row that GC deleted meanwhile is not judged (the row is read under a key-share lock, which
waits for a GC batch holding it); an object without a row counts as an orphan only when it is older than the grace
and still there after the row was looked up.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, bindparam, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob
from app.maintenance import references
from app.maintenance.listing import blob_pages, older_than
from app.maintenance.progress import Progress, Silent
from app.maintenance.repair import Repairer
from app.maintenance.to_the_end import to_the_end
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.verify import Check, Expected, Outcome, check_blobs

PAGE = 500
LISTED = 1000
"""Problems and orphans named in a report (the counts are always complete)."""
ResultT = TypeVar("ResultT")
OnLoop = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine on the event loop from the checking thread and returns its result."""


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
    """Problems of rows that nothing references yet, touched within the grace (imports in flight): not judged."""
    gone: int = 0
    """Problems of rows that GC deleted while the run went on: not judged."""
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


class Standing(enum.Enum):
    STORED = "stored"
    """The row stands: its check's outcome is the blob's."""
    IN_FLIGHT = "in-flight"
    """Touched within the grace and referenced by nothing yet: an import between its row and its upload."""


@dataclass(eq=False)
class Verifier:
    sessions: async_sessionmaker[AsyncSession]
    store: BlobStore
    options: VerifyOptions
    repairer: Repairer | None = None
    progress: Progress = field(default_factory=Silent)
    report: VerifyReport = field(init=False)
    """Filled in as the run goes: what it found so far when it fails or is stopped."""
    _created: dict[Digest, datetime] = field(init=False, default_factory=dict)
    """`created_at` of each row read and not yet settled: tells a row from one written again since."""

    def __post_init__(self) -> None:
        self.report = VerifyReport(scope=self.options.scope)

    async def run(self) -> VerifyReport:
        """One verification (a verifier runs once)."""
        started = time.monotonic()
        report = self.report
        self.progress.phase("blobs", await self._total())
        loop = asyncio.get_running_loop()

        def on_loop(work: Coroutine[Any, Any, ResultT]) -> ResultT:
            return asyncio.run_coroutine_threadsafe(work, loop).result()

        stop = threading.Event()
        # A thread of its own: it waits on the loop while a page settles (repairs use the default executor).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-pages") as pages:
            checking = loop.run_in_executor(pages, self._check_all, on_loop, stop, report)
            await to_the_end(checking, on_cancel=stop.set)
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

    def _check_all(self, on_loop: OnLoop, stop: threading.Event, report: VerifyReport) -> None:
        """In a thread: every check of the scope, settled a page at a time; ends early once `stop` is set."""
        page: list[Check] = []
        with closing(
            check_blobs(self.store, self._rows(on_loop, stop), concurrency=self.options.concurrency)
        ) as checks:
            for check in checks:
                if stop.is_set():
                    return
                page.append(check)
                self.progress.advance(1, check.zst_bytes)
                if len(page) >= PAGE:
                    on_loop(self._settle(page, report))
                    page = []
        on_loop(self._settle(page, report))

    def _rows(self, on_loop: OnLoop, stop: threading.Event) -> Iterator[Expected]:
        after: Digest | None = None
        while not stop.is_set():
            page: list[Expected] = on_loop(self._page(after))
            yield from page
            if len(page) < PAGE or self.options.scope != "all":
                return
            after = page[-1].digest

    async def _page(self, after: Digest | None) -> list[Expected]:
        query = select(Blob.digest, Blob.zst_size, Blob.zst_sha256, Blob.tar_size, Blob.created_at)
        if self.options.digest is not None:
            query = query.where(Blob.digest == self.options.digest)
        elif self.options.sample is not None:
            query = query.order_by(func.random()).limit(self.options.sample)
        else:
            if after is not None:
                query = query.where(Blob.digest > after)
            query = query.order_by(Blob.digest).limit(PAGE)
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        self._created.update((row.digest, row.created_at) for row in rows)
        return [Expected(row.digest, row.zst_size, row.zst_sha256, row.tar_size) for row in rows]

    async def _settle(self, checks: list[Check], report: VerifyReport) -> None:
        """Judge a page of checks, record their outcomes on the rows and count them in the report."""
        if not checks:
            return
        report.examined += len(checks)
        report.bytes_read += sum(check.zst_bytes for check in checks)
        problems = sorted((check for check in checks if check.outcome is not Outcome.OK), key=lambda c: c.digest)
        report.ok += len(checks) - len(problems)
        created = {check.digest: self._created.pop(check.digest, None) for check in checks}
        standing = await self._standing({check.digest: created[check.digest] for check in problems})
        judged = [check for check in problems if standing.get(check.digest) is Standing.STORED]
        report.gone += sum(1 for check in problems if check.digest not in standing)
        report.in_flight += sum(1 for check in problems if standing.get(check.digest) is Standing.IN_FLIGHT)
        await self._record([check for check in checks if check.outcome is Outcome.OK] + judged)
        for check in judged:
            await self._judge(check, report)

    async def _standing(self, created: dict[Digest, datetime | None]) -> dict[Digest, Standing]:
        """How the rows of these problem blobs (digest → the `created_at` the check was made for) stand now. Absent:
        GC deleted the row, or deleted it and an import wrote it again since (a new `created_at`)."""
        if not created:
            return {}
        in_flight = and_(
            Blob.touched_at >= func.now() - literal(timedelta(seconds=self.options.grace)),
            references.unreferenced_now(),
        )
        async with self.sessions() as session, session.begin():
            rows = await session.execute(
                select(Blob.digest, Blob.created_at, in_flight)
                .where(Blob.digest.in_(list(created)))
                .with_for_update(key_share=True, of=Blob)
            )
            return {
                digest: Standing.IN_FLIGHT if young else Standing.STORED
                for digest, row_created, young in rows.all()
                if row_created == created[digest]
            }

    async def _record(self, checks: list[Check]) -> None:
        if not checks:
            return
        values = [  # in digest order, as every verify run writes: two runs never wait on each other in a cycle
            {"key": check.digest, "outcome": check.outcome.value, "detail": check.detail or None}
            for check in sorted(checks, key=lambda check: check.digest)
        ]
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

    async def _judge(self, check: Check, report: VerifyReport) -> None:
        report.count(check.outcome)
        entry: dict[str, Any] = {"digest": str(check.digest), "outcome": check.outcome.value, "detail": check.detail}
        if self.options.repair and self.repairer is not None:
            repaired, how = await self.repairer.repair(check.digest)
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
                .where(Blob.digest == digest)
                .values(verified_at=func.now(), verify_outcome=Outcome.OK.value, verify_detail="repaired")
            )

    async def _find_orphans(self, report: VerifyReport) -> None:
        self.progress.phase("orphans")
        cutoff = older_than(self.options.grace)
        async with self.sessions() as session:
            async for page in blob_pages(self.store):
                old = [item.digest for item in page if item.last_modified < cutoff]
                known = set(await session.scalars(select(Blob.digest).where(Blob.digest.in_(old)))) if old else set()
                await session.rollback()
                orphans = await asyncio.to_thread(self._still_stored, sorted(set(old) - known))
                report.orphans += len(orphans)
                room = LISTED - len(report.orphan_digests)
                report.orphan_digests += [str(digest) for digest in orphans[: max(room, 0)]]
                self.progress.advance(len(page), sum(item.size for item in page))

    def _still_stored(self, digests: list[Digest]) -> list[Digest]:
        """Those of `digests` whose object is still there (GC may have deleted it since the listing)."""
        return [digest for digest in digests if self.store.exists(digest)]
