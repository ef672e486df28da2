"""Verify (DESIGN §6): every blob re-read and judged; problems named by digest; orphans listed; repair from Git."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zstandard
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Blob, RunStatus
from app.maintenance.service import Maintenance
from app.settings import AppSettings
from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.keys import blob_key
from storage.verify import Expected, Outcome, check_blob
from tests.app.conftest import Caller
from tests.app.maintenance.helpers import Client, import_template, put_orphan, s3_client


async def verify(maintenance: Maintenance, **options: Any) -> tuple[RunStatus, dict[str, Any]]:
    settings = {"digest": None, "sample": None, "grace": 0.0, "repair": False} | options
    started = await maintenance.start_verify(started_by="test", **settings)
    result = await started.execute(None)
    assert result.error is None, result.error
    return result.status, result.report


def overwrite(settings: AppSettings, digest: str, data: bytes) -> None:
    """Other bytes under the blob's key, with the metadata it had: what a bad disk or a stray writer leaves."""
    s3 = s3_client(settings)
    key = blob_key(Digest.parse(digest))
    metadata = s3.head_object(Bucket=settings.s3_bucket, Key=key)["Metadata"]
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=data, Metadata=metadata)


async def outcome_on_row(sessions: async_sessionmaker[AsyncSession], digest: str) -> tuple[str | None, str | None]:
    async with sessions() as session:
        row = (await session.execute(select(Blob.verify_outcome, Blob.verify_detail).where(
            Blob.digest == Digest.parse(digest).hex))).one()  # fmt: skip
    return row[0], row[1]


async def two_templates(client: Client, caller: Caller, origin: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    first = await import_template(client, caller, origin, "first")
    from tests.app.conftest import git

    (origin / "second").mkdir()
    (origin / "second" / "cleanup.sh").write_text("echo second\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "second")
    second = await import_template(client, caller, origin, "second", path="second")
    return first, second


async def test_all_good_is_ok_and_recorded_on_each_row(
    own_client: Client, carol: Caller, origin: Path, maintenance: Maintenance,
    sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    first, second = await two_templates(own_client, carol, origin)

    status, report = await verify(maintenance)

    assert status is RunStatus.SUCCEEDED
    assert report["all_ok"] is True
    assert (report["examined"], report["ok"], report["orphans"], report["problems"]) == (2, 2, 0, [])
    assert report["bytes_read"] == first["artifact"]["zst_size"] + second["artifact"]["zst_size"]
    assert await outcome_on_row(sessions, first["artifact"]["digest"]) == ("ok", None)


async def test_overwritten_deleted_and_extra_objects_are_each_named(
    own_client: Client, carol: Caller, origin: Path, maintenance: Maintenance, own_settings: AppSettings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    first, second = await two_templates(own_client, carol, origin)
    corrupt, missing = first["artifact"]["digest"], second["artifact"]["digest"]
    size = first["artifact"]["zst_size"]
    other = zstandard.ZstdCompressor().compress(b"not the template" * 64)
    overwrite(own_settings, corrupt, other.ljust(size, b"\0")[:size])  # same length, other bytes
    s3_client(own_settings).delete_object(Bucket=own_settings.s3_bucket, Key=blob_key(Digest.parse(missing)))
    orphan = put_orphan(s3_client(own_settings), own_settings.s3_bucket)

    status, report = await verify(maintenance)

    assert status is RunStatus.PROBLEMS
    assert report["all_ok"] is False
    by_digest = {problem["digest"]: problem for problem in report["problems"]}
    assert by_digest[corrupt]["outcome"] == "corrupt"
    assert corrupt in by_digest[corrupt]["detail"]
    assert by_digest[missing]["outcome"] == "missing"
    assert (report["corrupt"], report["missing"], report["orphans"]) == (1, 1, 1)
    assert report["orphan_digests"] == [str(orphan)]
    assert (await outcome_on_row(sessions, corrupt))[0] == "corrupt"
    assert (await outcome_on_row(sessions, missing))[0] == "missing"


async def test_a_row_without_its_object_is_in_flight_within_the_grace(
    own_client: Client, carol: Caller, origin: Path, maintenance: Maintenance, own_settings: AppSettings,
    sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    imported = await import_template(own_client, carol, origin, "fresh")
    digest = imported["artifact"]["digest"]
    s3_client(own_settings).delete_object(Bucket=own_settings.s3_bucket, Key=blob_key(Digest.parse(digest)))

    status, report = await verify(maintenance, grace=3600.0)
    assert status is RunStatus.SUCCEEDED
    assert (report["in_flight"], report["missing"]) == (1, 0)
    assert (await outcome_on_row(sessions, digest))[0] is None

    status, report = await verify(maintenance, digest=Digest.parse(digest), grace=0.0)
    assert status is RunStatus.PROBLEMS
    assert (report["examined"], report["missing"]) == (1, 1)


async def test_repair_packs_a_damaged_blob_again_from_its_commit(
    own_client: Client, carol: Caller, origin: Path, maintenance: Maintenance, own_settings: AppSettings,
    store: BlobStore, sessions: async_sessionmaker[AsyncSession],
) -> None:  # fmt: skip
    first, second = await two_templates(own_client, carol, origin)
    damaged, gone = first["artifact"]["digest"], second["artifact"]["digest"]
    overwrite(own_settings, damaged, b"garbage")
    s3_client(own_settings).delete_object(Bucket=own_settings.s3_bucket, Key=blob_key(Digest.parse(gone)))
    async with sessions() as session, session.begin():  # a version whose source no mirror has: cannot be repaired
        from app.db.models import TemplateVersion

        await session.execute(
            update(TemplateVersion)
            .where(TemplateVersion.digest == Digest.parse(gone).hex)
            .values(source={"repository_id": 999999, "commit_sha": "0" * 40, "original_path": "second"})
        )

    status, report = await verify(maintenance, repair=True)

    by_digest = {problem["digest"]: problem for problem in report["problems"]}
    assert by_digest[damaged]["outcome"] == "size-mismatch"
    assert by_digest[damaged]["repaired"] is True
    assert by_digest[gone]["repaired"] is False
    assert "no mirror" in by_digest[gone]["repair"]
    assert (report["repaired"], report["not_repaired"]) == (1, 1)
    assert status is RunStatus.PROBLEMS
    async with sessions() as session:
        row = await session.get(Blob, Digest.parse(damaged).hex)
    assert row is not None
    check = check_blob(store, Expected(Digest(row.digest), row.zst_size, row.zst_sha256, row.tar_size))
    assert check.outcome is Outcome.OK, check.detail
    assert (await outcome_on_row(sessions, damaged))[0] == "ok"
