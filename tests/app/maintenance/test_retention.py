"""Retention (AHOP_KEEP_VERSIONS, AHOP_TASK_RETENTION_DAYS), applied by the GC run: what goes and what must stay."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from app.db.models import MaintenanceRun, Role, RunStatus, Task, TaskLogLine
from app.maintenance.start import Maintenance
from tests.support.blobs import stored
from tests.support.deployment import Deployment
from tests.support.repositories import commit_new_content
from tests.support.templates import import_template


async def collect(maintenance: Maintenance) -> dict[str, int]:
    started = await maintenance.start_gc(dry_run=False, grace=0, wait=False, started_by="test")
    result = await started.execute(None)
    assert result.status is RunStatus.SUCCEEDED, result.error
    return result.report


async def test_old_versions_go_unless_current_or_run_by_an_unfinished_task(own: Deployment, origin: Path) -> None:
    own.maintenance.policy = dataclasses.replace(own.maintenance.policy, keep_versions=2)
    imported = await import_template(own.client, own.carol, origin, "kept-history", parameters=[])
    template_id, admin = imported["id"], own.carol[Role.ADMIN]
    digests = [imported["artifact"]["digest"]]
    for _ in range(3):
        commit_new_content(origin)
        response = await own.client.post(f"/api/v1/task-templates/{template_id}/sync", headers=admin)
        assert response.status_code in (200, 201), response.text
        detail = await own.client.get(f"/api/v1/task-templates/{template_id}", headers=admin)
        digests.append(detail.json()["artifact"]["digest"])
    task = await own.client.post("/api/v1/tasks", json={"template_id": template_id, "version": 1}, headers=admin)
    assert task.status_code == 201, task.text

    report = await collect(own.maintenance)

    versions = await own.client.get(f"/api/v1/task-templates/{template_id}/versions", headers=admin)
    assert sorted(entry["version"] for entry in versions.json()) == [1, 3, 4]
    assert report["versions_pruned"] == 1
    assert [stored(own.store, digest) for digest in digests] == [True, False, True, True]

    cancelled = await own.client.post(f"/api/v1/tasks/{task.json()['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    await collect(own.maintenance)
    versions = await own.client.get(f"/api/v1/task-templates/{template_id}/versions", headers=admin)
    assert sorted(entry["version"] for entry in versions.json()) == [3, 4]
    assert [stored(own.store, digest) for digest in digests] == [False, False, True, True]
    # The finished task keeps what it ran, though its version is gone.
    shown = await own.client.get(f"/api/v1/tasks/{task.json()['id']}", headers=admin)
    assert (shown.json()["version"], shown.json()["digest"]) == (1, digests[0])


async def test_finished_tasks_and_reports_past_their_days_go_with_their_output(own: Deployment, origin: Path) -> None:
    imported = await import_template(own.client, own.carol, origin, "busy", parameters=[])
    admin = own.carol[Role.ADMIN]
    ids = []
    for _ in range(3):
        response = await own.client.post("/api/v1/tasks", json={"template_id": imported["id"]}, headers=admin)
        assert response.status_code == 201, response.text
        ids.append(uuid.UUID(response.json()["id"]))
    old, recent, unfinished = ids
    for task_id in (old, recent):
        response = await own.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=admin)
        assert response.status_code == 200, response.text
    async with own.sessions() as session, session.begin():
        await session.execute(
            update(Task).where(Task.id == old).values(finished_at=func.now() - func.make_interval(0, 0, 0, 31))
        )
        session.add(TaskLogLine(task_id=old, seq=1, stream="stdout", line="long ago"))
        ancient = MaintenanceRun(
            id=uuid.uuid4(),
            kind="verify",
            status="succeeded",
            started_by="test",
            finished_at=datetime.now(UTC) - timedelta(days=40),
        )
        session.add(ancient)

    report = await collect(own.maintenance)

    assert report["tasks_pruned"] == 1
    assert report["runs_pruned"] == 1
    async with own.sessions() as session:
        left = set(await session.scalars(select(Task.id)))
        lines = await session.scalar(select(func.count()).select_from(TaskLogLine).where(TaskLogLine.task_id == old))
        runs = set(await session.scalars(select(MaintenanceRun.id)))
    assert left == {recent, unfinished}
    assert lines == 0
    assert ancient.id not in runs
    gone = await own.client.get(f"/api/v1/tasks/{old}", headers=admin)
    assert gone.status_code == 404
