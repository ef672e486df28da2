"""GC (DESIGN §6): what nothing references goes, what something references stays, a dry run tells the truth,
orphan objects wait out the grace, and one GC runs at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Role, RunStatus
from app.maintenance.runs import AlreadyRunning, get_run
from app.maintenance.start import Maintenance
from app.settings import AppSettings
from storage.blobstore import BlobStore, PendingUpload
from storage.keys import blob_key
from tests.support.blobs import blob_rows, listed, put_orphan, put_unreferenced, stored
from tests.support.deployment import Deployment
from tests.support.repositories import commit_new_content, git
from tests.support.s3 import s3_client
from tests.support.templates import import_template


async def gc(maintenance: Maintenance, *, grace: float = 0, dry_run: bool = False) -> dict[str, Any]:
    started = await maintenance.start_gc(dry_run=dry_run, grace=grace, wait=False, started_by="test")
    result = await started.execute(None)
    assert result.status is RunStatus.SUCCEEDED, result.error
    return result.report


async def test_gc_frees_what_nothing_references_and_keeps_the_rest(own: Deployment, origin: Path) -> None:
    kept = await import_template(
        own.client, own.carol, origin, "kept", original_path="scripts/disk_cleanup", parameters=[]
    )
    (origin / "other").mkdir()
    (origin / "other" / "cleanup.sh").write_text("echo other\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "other")
    gone = await import_template(own.client, own.carol, origin, "gone", original_path="other", parameters=[])
    response = await own.client.delete(f"/api/v1/task-templates/{gone['id']}", headers=own.carol[Role.ADMIN])
    assert response.status_code == 204, response.text
    orphan = put_orphan(s3_client(own.settings.s3_location()), own.settings.s3_bucket)

    report = await gc(own.maintenance)

    kept_digest, gone_digest = kept["artifact"]["digest"], gone["artifact"]["digest"]
    assert report["candidates"] == 1
    assert report["deleted"] == 1
    assert report["deleted_digests"] == [gone_digest]
    assert report["bytes_freed"] == gone["artifact"]["zst_size"]
    assert report["orphans_removed"] == 1
    assert report["orphan_digests"] == [str(orphan)]
    assert report["blobs_examined"] == 2
    assert stored(own.store, kept_digest)
    assert not stored(own.store, gone_digest)
    assert not stored(own.store, orphan)
    assert await blob_rows(own.sessions) == {kept_digest}
    # What stays still runs: the kept template's content verifies.
    response = await own.client.get(f"/api/v1/task-templates/{kept['id']}", headers=own.carol[Role.VIEWER])
    assert response.json()["artifact"]["digest"] == kept_digest


async def test_a_dry_run_changes_nothing_and_names_what_a_real_run_then_deletes(own: Deployment, origin: Path) -> None:
    imported = await import_template(own.client, own.carol, origin, "svc", parameters=[])
    digests = [imported["artifact"]["digest"]]
    for _ in range(3):  # versions 2..4; with AHOP_KEEP_VERSIONS=2 versions 1 and 2 are no longer retained
        commit_new_content(origin)
        response = await own.client.post(f"/api/v1/task-templates/{imported['id']}/sync", headers=own.carol[Role.ADMIN])
        assert response.status_code in (200, 201), response.text
        detail = await own.client.get(f"/api/v1/task-templates/{imported['id']}", headers=own.carol[Role.VIEWER])
        digests.append(detail.json()["artifact"]["digest"])
    orphan = put_orphan(s3_client(own.settings.s3_location()), own.settings.s3_bucket)
    own.maintenance.policy = type(own.maintenance.policy)(**{**own.maintenance.policy.__dict__, "keep_versions": 2})
    rows_before = await blob_rows(own.sessions)

    dry = await gc(own.maintenance, dry_run=True)

    assert dry["dry_run"] is True
    assert sorted(dry["candidate_digests"]) == sorted(digests[:2])
    assert dry["versions_pruned"] == 2
    assert dry["orphans_found"] == 1
    assert dry["orphan_digests"] == [str(orphan)]
    assert dry["orphan_bytes"] == own.store.head(orphan).zst_size
    assert dry["deleted"] == 0
    assert dry["orphans_removed"] == 0
    assert await blob_rows(own.sessions) == rows_before
    assert all(stored(own.store, digest) for digest in digests)
    assert stored(own.store, orphan)
    versions = await own.client.get(f"/api/v1/task-templates/{imported['id']}/versions", headers=own.carol[Role.VIEWER])
    assert len(versions.json()) == 4

    real = await gc(own.maintenance)

    assert sorted(real["deleted_digests"]) == sorted(dry["candidate_digests"])
    assert real["bytes_freed"] == dry["candidate_bytes"]
    assert real["orphan_digests"] == dry["orphan_digests"]
    assert real["orphan_bytes_freed"] == real["orphan_bytes"] == dry["orphan_bytes"]
    assert await blob_rows(own.sessions) == set(digests[2:])
    assert [stored(own.store, digest) for digest in digests] == [False, False, True, True]
    versions = await own.client.get(f"/api/v1/task-templates/{imported['id']}/versions", headers=own.carol[Role.VIEWER])
    assert sorted(entry["version"] for entry in versions.json()) == [3, 4]


async def test_an_object_without_a_row_survives_within_the_grace_and_goes_after_it(
    own_settings: AppSettings, maintenance: Maintenance, store: BlobStore
) -> None:
    """What a crashed import leaves: an object without a row, or a multipart upload never finished."""
    s3 = s3_client(own_settings.s3_location())
    orphan = put_orphan(s3, own_settings.s3_bucket)
    key = blob_key(put_orphan(s3, own_settings.s3_bucket))  # the key a large blob's upload was writing to
    s3.delete_object(Bucket=own_settings.s3_bucket, Key=key)
    upload = s3.create_multipart_upload(Bucket=own_settings.s3_bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=own_settings.s3_bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part" * 1000)

    within = await gc(maintenance, grace=3600)
    assert (within["orphans_found"], within["stale_uploads"]) == (0, 0)
    assert stored(store, orphan)
    assert [pending.upload_id for pending in store.list_pending_uploads()] == [upload]

    dry = await gc(maintenance, grace=0, dry_run=True)
    assert (dry["orphans_found"], dry["stale_uploads"], dry["uploads_aborted"]) == (1, 1, 0)
    assert [pending.upload_id for pending in store.list_pending_uploads()] == [upload]

    after = await gc(maintenance, grace=0)
    assert after["orphans_removed"] == 1
    assert (after["stale_uploads"], after["uploads_aborted"]) == (1, 1)
    assert not stored(store, orphan)
    assert list(store.list_pending_uploads()) == []
    store.abort_upload(PendingUpload(key, upload, datetime.now(UTC)))  # a second GC finding it gone is no error


async def test_two_gc_runs_at_once_exactly_one_proceeds(maintenance: Maintenance) -> None:
    first = await maintenance.start_gc(dry_run=False, grace=0, wait=False, started_by="first")
    with pytest.raises(AlreadyRunning, match=rf"already running \(run {first.run_id}"):
        await maintenance.start_gc(dry_run=False, grace=0, wait=False, started_by="second")

    waiting = asyncio.create_task(maintenance.start_gc(dry_run=True, grace=0, wait=True, started_by="third"))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "a GC with wait=True must wait for the lock"
    assert (await first.execute(None)).status is RunStatus.SUCCEEDED
    third = await asyncio.wait_for(waiting, timeout=30)
    assert (await third.execute(None)).status is RunStatus.SUCCEEDED


class CancelWhileDeleting:
    """Cancels the GC's task from inside its first DeleteObjects request, just before the request leaves: the
    cancel then lands while the objects of a batch are being deleted, however fast the machine is."""

    def __init__(self, store: BlobStore, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.loop = asyncio.get_running_loop()
        self.fired = False
        self.remove = store.on_request("DeleteObjects", self.cancel)

    def cancel(self) -> None:
        if not self.fired:
            self.fired = True
            self.loop.call_soon_threadsafe(self.task.cancel)


async def test_a_gc_stopped_while_deleting_leaves_no_row_without_its_object_and_reports_what_it_did(
    own_settings: AppSettings,
    maintenance: Maintenance,
    store: BlobStore,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A row whose object is gone would be handed out as a tree-cache hit; an object whose row is gone is only an
    orphan that a later GC removes. So a stopped sweep must never leave the first kind."""
    created = await put_unreferenced(s3_client(own_settings.s3_location()), own_settings.s3_bucket, sessions, 1000)
    for _ in range(2):  # 1,000 rows, then what is left
        remaining = await blob_rows(sessions)
        started = await maintenance.start_gc(dry_run=False, grace=0, wait=False, started_by="test")
        running = asyncio.create_task(started.execute(None))
        canceller = CancelWhileDeleting(store, running)
        try:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(running, timeout=120)
        finally:
            canceller.remove()
        assert canceller.fired, "the GC must have sent a DeleteObjects request"

        rows = await blob_rows(sessions)
        objects = await asyncio.to_thread(listed, store)
        assert rows <= objects, f"{len(rows - objects)} rows lost their objects"
        assert rows < remaining, "the cancel must land during the sweep, after a batch began"
        async with sessions() as session:
            run = await get_run(session, started.run_id)
        assert (run.status, run.error) == (RunStatus.FAILED.value, "stopped before it ended")
        assert run.report["progress"]["phase"] == "sweep"
        assert run.report["so_far"]["deleted"] == len(remaining) - len(rows)
        assert set(run.report["so_far"]["deleted_digests"]) == remaining - rows

    report = await gc(maintenance)

    assert await blob_rows(sessions) == set()
    assert await asyncio.to_thread(listed, store) == set()
    assert report["deleted"] + report["orphans_removed"] <= len(created)
