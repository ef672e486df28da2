"""`/api/v1/admin`: GC and verify over HTTP for system tokens: 202 with a run id, then the report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.db.models import MaintenanceRun, Role
from tests.support.api import Client
from tests.support.blobs import put_orphan, remove_object
from tests.support.deployment import Deployment
from tests.support.s3 import s3_client
from tests.support.templates import import_template
from tests.support.tenants import Caller
from tests.support.waiting import until


async def finished_run(client: Client, caller: Caller, run_id: str) -> dict[str, Any]:
    async def poll() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/admin/runs/{run_id}", headers=caller[Role.SYSTEM])
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run if run["status"] != "running" else None

    run: dict[str, Any] = await until(poll, f"run {run_id} to finish", bound=120)
    return run


async def test_gc_over_http_answers_202_and_its_report_is_read_later(own: Deployment) -> None:
    orphan = put_orphan(s3_client(own.settings.s3_location()), own.settings.s3_bucket)

    response = await own.client.post("/api/v1/admin/gc", json={"grace_seconds": 0}, headers=own.carol[Role.SYSTEM])

    assert response.status_code == 202, response.text
    started = response.json()
    assert started["report_url"] == f"/api/v1/admin/runs/{started['run_id']}"
    run = await finished_run(own.client, own.carol, started["run_id"])
    assert run["status"] == "succeeded"
    assert run["kind"] == "gc"
    assert run["report"]["orphan_digests"] == [str(orphan)]
    assert run["started_by"].startswith("token ")
    listed = await own.client.get("/api/v1/admin/runs?kind=gc", headers=own.carol[Role.SYSTEM])
    assert [item["id"] for item in listed.json()["items"]] == [started["run_id"]]


async def test_admin_routes_need_a_system_token_and_refuse_a_second_gc(own: Deployment) -> None:
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
        response = await own.client.post("/api/v1/admin/gc", json={}, headers=own.carol[role])
        assert response.status_code == 403, response.text
    held = await own.maintenance.start_gc(dry_run=True, grace=0, wait=False, started_by="cli")
    busy = await own.client.post("/api/v1/admin/gc", json={}, headers=own.carol[Role.SYSTEM])
    assert busy.status_code == 409
    assert f"already running (run {held.run_id}" in busy.json()["detail"]
    await held.execute(None)


async def test_verify_over_http_names_the_missing_blob_and_refuses_bad_input(own: Deployment, origin: Path) -> None:
    imported = await import_template(own.client, own.carol, origin, "watched", parameters=[])
    digest = imported["artifact"]["digest"]
    remove_object(own.settings, digest)

    response = await own.client.post("/api/v1/admin/verify", json={"grace_seconds": 0}, headers=own.carol[Role.SYSTEM])
    assert response.status_code == 202, response.text
    run = await finished_run(own.client, own.carol, response.json()["run_id"])
    assert run["status"] == "problems"
    assert run["report"]["problems"][0]["digest"] == digest
    assert run["report"]["problems"][0]["outcome"] == "missing"

    bad = await own.client.post("/api/v1/admin/verify", json={"digest": "md5:abc"}, headers=own.carol[Role.SYSTEM])
    assert bad.status_code == 422
    assert bad.json()["extra"]["errors"][0]["field"] == "digest"
    unknown = await own.client.post(
        "/api/v1/admin/verify", json={"digest": "sha256:" + "a" * 64}, headers=own.carol[Role.SYSTEM]
    )
    assert unknown.status_code == 404


async def test_a_run_whose_process_died_reads_as_failed(own: Deployment) -> None:
    run_id, listed_id = uuid.uuid4(), uuid.uuid4()
    async with own.sessions() as session, session.begin():  # what a crashed `ahop gc` leaves behind
        for crashed in (run_id, listed_id):
            session.add(
                MaintenanceRun(
                    id=crashed, kind="gc", started_by="crashed", updated_at=datetime.now(UTC) - timedelta(minutes=10)
                )
            )

    response = await own.client.get(f"/api/v1/admin/runs/{run_id}", headers=own.carol[Role.SYSTEM])

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    assert "stopped reporting" in response.json()["error"]
    listed = await own.client.get("/api/v1/admin/runs?kind=gc", headers=own.carol[Role.SYSTEM])
    assert {item["id"]: item["status"] for item in listed.json()["items"]} == {
        str(run_id): "failed",
        str(listed_id): "failed",
    }
    bad_kind = await own.client.get("/api/v1/admin/runs?kind=backup", headers=own.carol[Role.SYSTEM])
    assert bad_kind.status_code == 422, bad_kind.text
    assert bad_kind.json()["extra"]["errors"][0]["field"] == "kind"
    missing = await own.client.get(f"/api/v1/admin/runs/{uuid.uuid4()}", headers=own.carol[Role.SYSTEM])
    assert missing.status_code == 404
