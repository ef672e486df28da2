"""Verify (DESIGN §6): every blob re-read and judged; problems named by digest; orphans listed; repair from Git."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob, RunStatus, TemplateVersion
from app.maintenance.gc import GarbageCollector, GcOptions
from app.maintenance.start import Maintenance
from app.maintenance.verify import Verifier, VerifyOptions
from app.settings import AppSettings
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.verify import Expected, Outcome, check_blob
from tests.support.api import Client
from tests.support.blobs import blob_rows, overwrite, put_orphan, put_unreferenced, remove_object, row_without_object
from tests.support.deployment import Deployment
from tests.support.repositories import git
from tests.support.s3 import s3_client
from tests.support.templates import import_template
from tests.support.tenants import Caller


async def verify(maintenance: Maintenance, **options: Any) -> tuple[RunStatus, dict[str, Any]]:
    settings = {"digest": None, "sample": None, "grace": 0.0, "repair": False} | options
    started = await maintenance.start_verify(started_by="test", **settings)
    result = await started.execute(None)
    assert result.error is None, result.error
    return result.status, result.report


async def outcome_on_row(sessions: async_sessionmaker[AsyncSession], digest: str) -> tuple[str | None, str | None]:
    async with sessions() as session:
        row = (
            await session.execute(
                select(Blob.verify_outcome, Blob.verify_detail).where(Blob.digest == Digest.parse(digest))
            )
        ).one()
    return row[0], row[1]


async def two_templates(client: Client, caller: Caller, origin: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    first = await import_template(client, caller, origin, "first", parameters=[])
    (origin / "second").mkdir()
    (origin / "second" / "cleanup.sh").write_text("echo second\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "second")
    second = await import_template(client, caller, origin, "second", original_path="second", parameters=[])
    return first, second


async def test_all_good_is_ok_and_recorded_on_each_row(own: Deployment, origin: Path) -> None:
    first, second = await two_templates(own.client, own.carol, origin)

    status, report = await verify(own.maintenance)

    assert status is RunStatus.SUCCEEDED
    assert report["all_ok"] is True
    assert (report["examined"], report["ok"], report["orphans"], report["problems"]) == (2, 2, 0, [])
    assert report["bytes_read"] == first["artifact"]["zst_size"] + second["artifact"]["zst_size"]
    assert await outcome_on_row(own.sessions, first["artifact"]["digest"]) == ("ok", None)


async def test_overwritten_deleted_and_extra_objects_are_each_named(own: Deployment, origin: Path) -> None:
    first, second = await two_templates(own.client, own.carol, origin)
    corrupt, missing = first["artifact"]["digest"], second["artifact"]["digest"]
    size = first["artifact"]["zst_size"]
    other = zstandard.ZstdCompressor().compress(b"not the template" * 64)
    overwrite(own.settings, corrupt, other.ljust(size, b"\0")[:size])  # same length, other bytes
    remove_object(own.settings, missing)
    orphan = put_orphan(s3_client(own.settings.s3_location()), own.settings.s3_bucket)

    status, report = await verify(own.maintenance)

    assert status is RunStatus.PROBLEMS
    assert report["all_ok"] is False
    by_digest = {problem["digest"]: problem for problem in report["problems"]}
    assert by_digest[corrupt]["outcome"] == "corrupt"
    assert corrupt in by_digest[corrupt]["detail"]
    assert by_digest[missing]["outcome"] == "missing"
    assert (report["corrupt"], report["missing"], report["orphans"]) == (1, 1, 1)
    assert report["orphan_digests"] == [str(orphan)]
    assert (await outcome_on_row(own.sessions, corrupt))[0] == "corrupt"
    assert (await outcome_on_row(own.sessions, missing))[0] == "missing"


async def test_a_young_row_that_nothing_references_yet_is_in_flight_but_a_referenced_one_is_missing(
    own: Deployment, origin: Path
) -> None:
    imported = await import_template(own.client, own.carol, origin, "fresh", parameters=[])
    referenced = imported["artifact"]["digest"]
    remove_object(own.settings, referenced)
    pending = await row_without_object(own.sessions)

    status, report = await verify(own.maintenance, grace=3600.0)
    assert status is RunStatus.PROBLEMS
    assert (report["examined"], report["in_flight"], report["missing"]) == (2, 1, 1)
    assert [problem["digest"] for problem in report["problems"]] == [referenced]
    assert (await outcome_on_row(own.sessions, pending))[0] is None
    assert (await outcome_on_row(own.sessions, referenced))[0] == "missing"

    status, report = await verify(own.maintenance, digest=Digest.parse(pending), grace=0.0)
    assert status is RunStatus.PROBLEMS
    assert (report["examined"], report["missing"], report["in_flight"]) == (1, 1, 0)


async def test_repair_packs_a_damaged_blob_again_from_its_commit(own: Deployment, origin: Path) -> None:
    first, second = await two_templates(own.client, own.carol, origin)
    damaged, gone = first["artifact"]["digest"], second["artifact"]["digest"]
    overwrite(own.settings, damaged, b"garbage")
    remove_object(own.settings, gone)
    async with own.sessions() as session, session.begin():  # a version whose source no mirror has: cannot be repaired
        await session.execute(
            update(TemplateVersion)
            .where(TemplateVersion.digest == Digest.parse(gone))
            .values(source={"repository_id": 999999, "commit_sha": "0" * 40, "original_path": "second"})
        )

    status, report = await verify(own.maintenance, repair=True)

    by_digest = {problem["digest"]: problem for problem in report["problems"]}
    assert by_digest[damaged]["outcome"] == "size-mismatch"
    assert by_digest[damaged]["repaired"] is True
    assert by_digest[gone]["repaired"] is False
    assert "no mirror" in by_digest[gone]["repair"]
    assert (report["repaired"], report["not_repaired"]) == (1, 1)
    assert status is RunStatus.PROBLEMS
    async with own.sessions() as session:
        row = await session.get(Blob, Digest.parse(damaged))
    assert row is not None
    check = check_blob(own.store, Expected(row.digest, row.zst_size, row.zst_sha256, row.tar_size))
    assert check.outcome is Outcome.OK, check.detail
    assert (await outcome_on_row(own.sessions, damaged))[0] == "ok"


class CancelWhileChecking:
    """Progress that cancels the verify run's task once `after` blobs have been checked."""

    def __init__(self, after: int) -> None:
        self.after, self.checked = after, 0
        self.task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, items: int = 1, nbytes: int = 0) -> None:  # called from the checking thread
        self.checked += items
        if self.checked == self.after and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)


async def test_a_cancelled_verify_stops_reading_before_it_returns(
    own_settings: AppSettings, store: BlobStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Ctrl-C on `ahop verify`, or the server shutting down, must not leave checks running behind its back."""
    await put_unreferenced(s3_client(own_settings.s3_location()), own_settings.s3_bucket, sessions, 1200)
    progress = CancelWhileChecking(after=100)
    verifier = Verifier(sessions, store, VerifyOptions(grace=0), progress=progress)
    progress.task = running = asyncio.create_task(verifier.run())

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, timeout=120)

    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("verify")] == []
    recorded = await verified_rows(sessions)
    await asyncio.sleep(1.0)
    assert await verified_rows(sessions) == recorded
    assert progress.checked < 1200


async def verified_rows(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).where(Blob.verified_at.is_not(None))) or 0)


async def test_verify_beside_a_gc_reports_no_problem_that_gc_made_on_purpose(
    own_settings: AppSettings, store: BlobStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """GC deletes rows and objects while verify reads them: neither the deleted objects nor the rows read before
    their deletion are problems, and every blob is either checked ok or gone."""
    await put_unreferenced(s3_client(own_settings.s3_location()), own_settings.s3_bucket, sessions, 1200)
    verifier = Verifier(sessions, store, VerifyOptions(grace=0))
    collector = GarbageCollector(sessions, store, GcOptions(grace=0, batch=100))

    report, collected = await asyncio.gather(verifier.run(), collector.run())

    assert (report.missing, report.corrupt, report.size_mismatch, report.orphans) == (0, 0, 0, 0), report.problems
    assert report.ok + report.gone == report.examined
    # GC skips the rows verify is writing its outcomes on at that moment, and says so.
    assert len(await blob_rows(sessions)) == collected.kept_in_use == 1200 - collected.deleted
