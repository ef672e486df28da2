"""Starting GC and verify runs, the same way for the command line and the API: take the lock (GC), create the
run's row, and hand back what executes the run, records its progress and stores its report."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.engine import create_session_factory
from app.db.models import Blob, RunKind, RunStatus
from app.errors import InvalidInput, NotFound
from app.git.mirror import Mirrors
from app.maintenance.gc import GarbageCollector, GcOptions
from app.maintenance.progress import Progress
from app.maintenance.repair import Repairer
from app.maintenance.runs import GcLock, RunRecorder, create_run
from app.maintenance.verify import Verifier, VerifyOptions
from app.settings import AppSettings
from storage.blobstore import BlobStore
from storage.canonical import Limits
from storage.digest import Digest
from storage.errors import StorageError

log = logging.getLogger("ahop.maintenance")


@dataclass(frozen=True)
class RunResult:
    run_id: uuid.UUID
    status: RunStatus
    report: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class StartedRun:
    run_id: uuid.UUID
    execute: Callable[[Progress | None], Coroutine[Any, Any, RunResult]]
    """Runs it to its end (with optional progress for a terminal); never raises for a failure of the run itself."""


class _Both:
    """Progress told to two watchers: the run's row and, optionally, a terminal."""

    def __init__(self, first: Progress, second: Progress | None) -> None:
        self.watchers = [first] if second is None else [first, second]

    def phase(self, name: str, total: int | None = None) -> None:
        for watcher in self.watchers:
            watcher.phase(name, total)

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        for watcher in self.watchers:
            watcher.advance(items, nbytes)


@dataclass(frozen=True)
class Policy:
    """The settings maintenance runs by."""

    keep_versions: int = 10
    task_retention: timedelta = timedelta(days=30)
    default_grace: float = 3600.0
    verify_concurrency: int = 4


@dataclass(eq=False)
class Maintenance:
    """Starts GC and verify runs by the policy; repairs need the `repairer`, which the server's mirrors make."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: BlobStore
    policy: Policy
    repairer: Repairer | None = None

    async def start_gc(self, *, dry_run: bool, grace: float | None, wait: bool, started_by: str) -> StartedRun:
        """Take the GC lock (AlreadyRunning unless `wait`) and record the run; the lock goes when it ends."""
        options = GcOptions(
            grace=self.policy.default_grace if grace is None else grace,
            keep_versions=self.policy.keep_versions,
            task_retention=self.policy.task_retention,
            dry_run=dry_run,
        )
        lock = GcLock(self.engine)
        await lock.acquire(self.sessions, wait=wait)
        try:
            run_id = await create_run(
                self.sessions, RunKind.GC, {"dry_run": dry_run, "grace_seconds": options.grace}, started_by
            )
        except BaseException:
            await lock.release()
            raise

        async def execute(progress: Progress | None) -> RunResult:
            try:
                async with RunRecorder(self.sessions, run_id) as recorder:
                    collector = GarbageCollector(self.sessions, self.store, options, _Both(recorder, progress))
                    return await _finish(recorder, run_id, lambda: _gc_report(collector), collector.report.to_json)
            finally:
                await lock.release()

        return StartedRun(run_id, execute)

    async def start_verify(
        self, *, digest: Digest | None, sample: int | None, grace: float | None, repair: bool, started_by: str
    ) -> StartedRun:
        """Record a verify run (several may run at once: they only read, and a repair rewrites what is broken)."""
        options = VerifyOptions(
            digest=digest,
            sample=sample,
            grace=self.policy.default_grace if grace is None else grace,
            repair=repair,
            concurrency=self.policy.verify_concurrency,
        )
        if repair and self.repairer is None:
            raise InvalidInput("repair needs the server's Git mirrors, which this process does not have")
        if digest is not None:
            async with self.sessions() as session:
                if await session.get(Blob, digest) is None:
                    raise NotFound(f"no blob {digest} is recorded")
        recorded = {
            "scope": options.scope,
            "digest": str(digest) if digest else None,
            "sample": sample,
            "grace_seconds": options.grace,
            "repair": repair,
        }
        run_id = await create_run(self.sessions, RunKind.VERIFY, recorded, started_by)

        async def execute(progress: Progress | None) -> RunResult:
            async with RunRecorder(self.sessions, run_id) as recorder:
                verifier = Verifier(self.sessions, self.store, options, self.repairer, _Both(recorder, progress))
                return await _finish(recorder, run_id, lambda: _verify_report(verifier), verifier.report.to_json)

        return StartedRun(run_id, execute)


async def _verify_report(verifier: Verifier) -> tuple[RunStatus, dict[str, Any]]:
    report = await verifier.run()
    return (RunStatus.SUCCEEDED if report.all_ok else RunStatus.PROBLEMS), report.to_json()


async def _gc_report(collector: GarbageCollector) -> tuple[RunStatus, dict[str, Any]]:
    report = await collector.run()
    return RunStatus.SUCCEEDED, report.to_json()


async def _finish(
    recorder: RunRecorder,
    run_id: uuid.UUID,
    work: Callable[[], Awaitable[tuple[RunStatus, dict[str, Any]]]],
    so_far: Callable[[], dict[str, Any]],
) -> RunResult:
    """Run `work` and record how it ended; a failure of the storage or the database ends the run as failed, with
    the phase it was in and what it had done (`so_far`: for GC, what it had deleted)."""
    try:
        status, report = await work()
    except asyncio.CancelledError:
        stopped = {"progress": dict(recorder.state), "so_far": so_far()}
        await asyncio.shield(recorder.finish(RunStatus.FAILED, stopped, "stopped before it ended"))
        raise
    except StorageError as exc:
        error = f"S3: {exc}"
    except Exception as exc:
        log.exception("maintenance run %s failed", run_id)
        error = f"{type(exc).__name__}: {exc}"
    else:
        await recorder.finish(status, report)
        return RunResult(run_id, status, report)
    report = {"progress": dict(recorder.state), "so_far": so_far()}
    await recorder.finish(RunStatus.FAILED, report, error)
    return RunResult(run_id, RunStatus.FAILED, report, error)


def policy_of(settings: AppSettings) -> Policy:
    return Policy(
        keep_versions=settings.keep_versions,
        task_retention=timedelta(days=settings.task_retention_days),
        default_grace=settings.gc_grace,
        verify_concurrency=settings.verify_concurrency,
    )


def build_maintenance(settings: AppSettings, engine: AsyncEngine, store: BlobStore) -> Maintenance:
    """Maintenance as a server or `ahop gc|verify` runs it, from the settings (repairs use the server's mirrors)."""
    mirrors = Mirrors(settings.data_dir, settings.git_options())
    limits = Limits(max_bytes=settings.max_template_bytes, max_files=settings.max_template_files)
    repairer = Repairer(create_session_factory(engine), store, mirrors, limits, settings.data_dir / "tmp")
    return Maintenance(engine, create_session_factory(engine), store, policy_of(settings), repairer)
