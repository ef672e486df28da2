"""`GET /metrics` of the API: Prometheus text without a token, import counters, store and task figures that match the
database, the dispatch histogram fed by a real worker, and a scrape that survives a database outage."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support import waiting
from tests.support.api import Client
from tests.support.database import sql
from tests.support.fleet import Fleet
from tests.support.metrics_text import Samples, parse_samples, value
from tests.support.repositories import add_repository, commit_all
from tests.support.templates import body
from tests.support.tenants import Caller

API_METRICS = {
    "ahop_imports",
    "ahop_import_dedup",
    "ahop_task_dispatch_seconds",
    "ahop_metrics_database_up",
    "ahop_blobs",
    "ahop_blobs_stored_bytes",
    "ahop_blobs_tar_bytes",
    "ahop_tasks",
    "ahop_maintenance_runs",
}


async def scrape(client: Client) -> Samples:
    """Every sample of `GET /metrics` (asked without a token), by name and labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


async def import_template(client: Client, caller: Caller, repository_id: int, code: str, **fields: Any) -> int:
    payload = body(repository_id, code=code, parameters=[], **fields)
    response = await client.post("/api/v1/task-templates", json=payload, headers=caller[Role.ADMIN])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def run_task(client: Client, caller: Caller, template_id: int) -> str:
    response = await client.post("/api/v1/tasks", json={"template_id": template_id}, headers=caller[Role.OPERATOR])
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def task_status(client: Client, caller: Caller, task_id: str) -> str:
    response = await client.get(f"/api/v1/tasks/{task_id}", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


@pytest.fixture
def one_script(tmp_path: Path) -> Path:
    """A repository whose `one` directory holds a single script: imported as the directory or as the file, it packs
    to the same blob under two different tree → digest cache keys."""
    repo = tmp_path / "one-origin"
    (repo / "one").mkdir(parents=True)
    (repo / "one" / "cleanup.sh").write_text(f"#!/bin/bash\necho {secrets.token_hex(8)}\n")
    commit_all(repo, message="one script")
    return repo


async def test_metrics_answer_without_a_token_in_the_prometheus_text_format(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert API_METRICS - set(families) == set()
    assert all(family.documentation for name, family in families.items() if name.startswith("ahop_"))
    assert value(await scrape(client), "ahop_metrics_database_up") == 1
    schema = await client.get("/schema/openapi.json")
    assert "/metrics" not in schema.json()["paths"]


async def test_imports_are_counted_and_the_blob_figures_match_the_database(
    client: Client, alice: Caller, one_script: Path, database_url: str
) -> None:
    repository_id = await add_repository(client, alice, one_script)
    before = await scrape(client)
    assert value(before, "ahop_imports_total", result="packed") == 0

    await import_template(client, alice, repository_id, "first", original_path="one")
    await import_template(client, alice, repository_id, "again", original_path="one")  # the tree cache knows it
    # The file alone is another cache key, but its blob is the one already stored: packed, nothing uploaded.
    await import_template(client, alice, repository_id, "file", original_path="one/cleanup.sh")

    after = await scrape(client)
    assert value(after, "ahop_imports_total", result="packed") == 2
    assert value(after, "ahop_imports_total", result="cached") == 1
    assert value(after, "ahop_import_dedup_total") == 1
    (totals,) = await sql(
        database_url, "SELECT count(*) AS blobs, sum(zst_size) AS zst, sum(tar_size) AS tar FROM blobs"
    )
    assert value(after, "ahop_blobs_stored_bytes") == totals["zst"]
    assert value(after, "ahop_blobs_tar_bytes") == totals["tar"]
    outcomes = {
        row["outcome"]: row["count"]
        for row in await sql(
            database_url, "SELECT coalesce(verify_outcome, 'unverified') AS outcome, count(*) FROM blobs GROUP BY 1"
        )
    }
    assert outcomes["unverified"] >= 1  # ours, at least
    by_outcome = {labels[0][1]: count for (name, labels), count in after.items() if name == "ahop_blobs"}
    assert {outcome: count for outcome, count in by_outcome.items() if count} == outcomes
    assert sum(by_outcome.values()) == totals["blobs"]


async def test_tasks_by_status_match_the_database(
    client: Client, alice: Caller, one_script: Path, database_url: str
) -> None:
    async def database_counts() -> dict[str, int]:
        return {
            row["status"]: row["count"]
            for row in await sql(database_url, "SELECT status, count(*) FROM tasks GROUP BY status")
        }

    def metric_counts(samples: Samples) -> dict[str, float]:
        return {labels[0][1]: count for (name, labels), count in samples.items() if name == "ahop_tasks" and count}

    repository_id = await add_repository(client, alice, one_script)
    template_id = await import_template(client, alice, repository_id, "cleanup", original_path="one")
    task_id = await run_task(client, alice, template_id)  # no worker serves the pool: it stays queued
    queued = await scrape(client)
    assert metric_counts(queued) == await database_counts()
    assert value(queued, "ahop_tasks", status="queued") >= 1

    response = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=alice[Role.OPERATOR])
    assert response.status_code == 200, response.text
    cancelled = await scrape(client)
    assert metric_counts(cancelled) == await database_counts()
    assert value(cancelled, "ahop_tasks", status="queued") == value(queued, "ahop_tasks", status="queued") - 1
    assert value(cancelled, "ahop_tasks", status="cancelled") == value(queued, "ahop_tasks", status="cancelled") + 1


async def test_the_last_completed_gc_is_reported_and_dry_or_failed_runs_are_not(
    client: Client, database_url: str
) -> None:
    report = {
        "blobs_examined": 9,
        "candidates": 4,
        "deleted": 3,
        "bytes_freed": 3000,
        "orphans_removed": 2,
        "orphan_bytes_freed": 200,
        "versions_pruned": 0,
        "tasks_pruned": 0,
        "duration_seconds": 1.5,
    }
    noise = {**report, "deleted": 99}
    before = await scrape(client)
    # What GC runs record: a completed run, then (later) a dry run and a run that failed.
    rows = await sql(
        database_url,
        f"""INSERT INTO maintenance_runs (kind, status, options, report, started_at, finished_at) VALUES
        ('gc', 'succeeded', '{{"dry_run": false}}', '{json.dumps(report)}', now() - interval '2 s', now()),
        ('gc', 'succeeded', '{{"dry_run": true}}', '{json.dumps(noise)}', now(), now() + interval '1 s'),
        ('gc', 'failed', '{{"dry_run": false}}', '{json.dumps(noise)}', now(), now() + interval '1 s')
        RETURNING id, extract(epoch FROM finished_at) AS finished""",
    )
    try:
        samples = await scrape(client)
    finally:
        await sql(database_url, "DELETE FROM maintenance_runs WHERE id = ANY($1)", [row["id"] for row in rows])
    assert value(samples, "ahop_gc_last_completed_timestamp_seconds") == pytest.approx(float(rows[0]["finished"]))
    assert value(samples, "ahop_gc_last_deleted_blobs") == 3
    assert value(samples, "ahop_gc_last_freed_bytes") == 3000
    assert value(samples, "ahop_gc_last_orphans_removed") == 2
    assert value(samples, "ahop_gc_last_orphan_freed_bytes") == 200
    assert value(samples, "ahop_gc_last_duration_seconds") == 1.5
    for status, added in (("succeeded", 2), ("failed", 1)):
        runs = value(samples, "ahop_maintenance_runs", kind="gc", status=status)
        assert runs == value(before, "ahop_maintenance_runs", kind="gc", status=status) + added


@pytest.fixture
async def server(api_settings: AppSettings) -> AsyncIterator[Client]:
    """The API with its control loop at a test's pace, so worker events are recorded promptly."""
    async with AsyncTestClient(create_app(api_settings.model_copy(update={"control_interval": 0.2}))) as client:
        yield client


async def test_the_start_of_a_task_on_a_worker_is_timed_from_its_creation(
    server: Client, alice: Caller, one_script: Path, fleet: Fleet
) -> None:
    repository_id = await add_repository(server, alice, one_script)
    template_id = await import_template(server, alice, repository_id, "cleanup", original_path="one")
    assert value(await scrape(server), "ahop_task_dispatch_seconds_count") == 0
    fleet.start("w1")
    task_id = await run_task(server, alice, template_id)

    async def succeeded() -> bool:
        return await task_status(server, alice, task_id) == "success"

    await waiting.until(succeeded, f"task {task_id} to succeed", 60)
    samples = await scrape(server)
    assert value(samples, "ahop_task_dispatch_seconds_count") == 1
    assert value(samples, "ahop_task_dispatch_seconds_bucket", le="+Inf") == 1
    assert value(samples, "ahop_task_dispatch_seconds_sum") >= 0


async def test_without_the_database_a_scrape_still_answers_with_the_process_metrics(
    api_settings: AppSettings,
) -> None:
    away = api_settings.model_copy(
        update={"database_url": "postgresql://ahop@127.0.0.1:1/ahop", "control_loop": False, "health_timeout": 5.0}
    )
    async with AsyncTestClient(create_app(away)) as client:
        samples = await scrape(client)
    assert value(samples, "ahop_metrics_database_up") == 0
    assert value(samples, "ahop_imports_total", result="packed") == 0
    assert not any(name == "ahop_blobs" for name, _ in samples)
