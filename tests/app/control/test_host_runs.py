"""A targets task's runs on its hosts as its worker reports them: host events recorded once per attempt, output
filtered by host, per-host outcomes counted, host runs lost with their worker or cancelled with their task, and a
retry that runs on the snapshot, never on the inventory's later state.

Events and log lines are written the way a worker writes them, through `worker.protocol`'s encoders.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client
from tests.support.inventory import make_inventory
from tests.support.metrics_text import parse_samples, value
from tests.support.task_fixtures import (  # noqa: F401  (fixtures of the tests that start tasks)
    cancel_unfinished_tasks,
    fast_api_settings,
    redis_client,
)
from tests.support.tasks import create_task, queued_job, show, task_in
from tests.support.templates import import_template
from tests.support.tenants import Caller
from tests.support.workers import iso, recorded, send, write

DIGEST = "ab" * 32


async def _task(client: Client, caller: Caller, origin: Path, tmp_path: Path, **template: Any) -> dict[str, Any]:
    """A task of a targets template on web-01, web-02 and db-01."""
    await make_inventory(client, caller, tmp_path)
    made = await import_template(client, caller, origin, code="fanout", execution="targets", **template)
    return await create_task(client, caller, made["id"], labels=["web", "db"], params={"days": 1})


async def _runs(client: Client, caller: Caller, task: dict[str, Any], query: str = "") -> dict[str, dict[str, Any]]:
    answer = await client.get(f"/api/v1/tasks/{task['id']}/hosts{query}", headers=caller[Role.VIEWER])
    assert answer.status_code == 200, answer.text
    return {run["host"]: run for run in answer.json()}


async def _lines(client: Client, caller: Caller, task: dict[str, Any], query: str = "") -> list[tuple[str, str]]:
    answer = await client.get(f"/api/v1/tasks/{task['id']}/logs{query}", headers=caller[Role.VIEWER])
    assert answer.status_code == 200, answer.text
    return [(item["host"], item["line"]) for item in answer.json()["items"]]


async def test_host_events_drive_the_host_runs_and_the_output_is_filtered_by_host(
    client: Client, alice: Caller, origin: Path, redis: Redis, tmp_path: Path
) -> None:
    task = await _task(client, alice, origin, tmp_path)
    await send(redis, "started", task)
    await send(redis, "host_started", task, host="web-01")
    await send(redis, "host_started", task, host="web-02")
    await write(redis, task, ("stdout", "web-01 says hi"), host="web-01")
    await write(redis, task, ("stdout", "web-02 says hi"), ("stderr", "web-02 broke"), first=2, host="web-02")
    await write(redis, task, ("stderr", "the worker's own line"), first=4)
    await recorded(redis)
    runs = await _runs(client, alice, task)
    assert {name: run["status"] for name, run in runs.items()} == {
        "db-01": "pending",
        "web-01": "running",
        "web-02": "running",
    }
    assert runs["web-01"]["started_at"].endswith("Z")
    live = await _lines(client, alice, task, "?host=web-02")
    assert live == [("web-02", "web-02 says hi"), ("web-02", "web-02 broke")]

    await send(redis, "host_finished", task, host="web-01", status="success", exit_code=0, digest=DIGEST)
    await send(redis, "host_finished", task, host="web-02", status="failed", exit_code=1, digest=DIGEST)
    await send(redis, "host_finished", task, host="db-01", status="unreachable", error="db-01: connection refused")
    await send(redis, "host_finished", task, host="web-01", status="failed", exit_code=9)  # a duplicate's change
    await send(redis, "host_finished", task, attempt=2, host="db-01", status="success")  # an attempt it never had
    await send(redis, "finished", task, status="failed", error="2 of 3 hosts did not succeed", log_lines=4)
    done = await task_in(client, alice, task["id"], "failed")
    assert done["exit_code"] is None

    runs = await _runs(client, alice, task)
    assert {name: (run["status"], run["exit_code"], run["digest"]) for name, run in runs.items()} == {
        "db-01": ("unreachable", None, None),
        "web-01": ("success", 0, f"sha256:{DIGEST}"),
        "web-02": ("failed", 1, f"sha256:{DIGEST}"),
    }
    assert runs["db-01"]["error"] == "db-01: connection refused"
    assert runs["db-01"]["started_at"] == runs["db-01"]["finished_at"], "it never started: it ended at once"
    assert runs["web-01"]["address"] == "web-01.example.org"

    assert await _lines(client, alice, task, "?host=web-02") == live, "the stored lines keep their host"
    assert await _lines(client, alice, task, "?host=web-01") == [("web-01", "web-01 says hi")]
    assert ("", "the worker's own line") in await _lines(client, alice, task)
    assert await _lines(client, alice, task, "?host=nowhere") == []

    metrics = parse_samples((await client.get("/metrics")).text)
    counts = {status: value(metrics, "ahop_host_runs_total", status=status) for status in ("success", "failed")}
    assert counts == {"success": 1.0, "failed": 1.0}, "the duplicate counted nothing"
    assert value(metrics, "ahop_host_runs_total", status="unreachable") == 1.0

    no_attempt = await client.get(f"/api/v1/tasks/{task['id']}/hosts?attempt=2", headers=alice[Role.VIEWER])
    assert no_attempt.status_code == 422, no_attempt.text
    assert "attempt" in no_attempt.text


async def test_a_lost_worker_loses_its_host_runs_and_the_retry_runs_on_the_snapshot(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis, tmp_path: Path
) -> None:
    async with AsyncTestClient(create_app(api_settings.model_copy(update={"lost_grace": 0}))) as client:
        task = await _task(client, alice, origin, tmp_path, max_attempts=2, retry_on=["lost"])
        first = await queued_job(redis, task["id"])
        assert first is not None
        assert first.targets is not None
        db_01 = next(host for host in first.targets.hosts if host.name == "db-01")
        moved = await client.put(
            f"/api/v1/hosts/{db_01.host_id}", json={"address": "10.1.1.1", "port": 2200}, headers=alice[Role.ADMIN]
        )
        assert moved.status_code == 200, moved.text

        hour_ago = iso(datetime.now(UTC) - timedelta(hours=1))
        await send(redis, "started", task, worker="w-dead", at=hour_ago)  # no heartbeat of w-dead: it is lost
        await send(redis, "host_started", task, worker="w-dead", host="web-01", at=hour_ago)
        await send(redis, "host_finished", task, worker="w-dead", host="web-02", status="success", at=hour_ago)
        await task_in(client, alice, task["id"], "queued", attempt=2)

        lost = await _runs(client, alice, task, "?attempt=1")
        assert {name: run["status"] for name, run in lost.items()} == {
            "db-01": "lost",
            "web-01": "lost",
            "web-02": "success",
        }
        assert "w-dead" in lost["web-01"]["error"]
        second = await _runs(client, alice, task)
        assert {run["status"] for run in second.values()} == {"pending"}
        assert second["db-01"]["address"] == "db-01.example.org"

        retry = await queued_job(redis, task["id"], attempt=2)
        assert retry is not None
        assert retry.targets == first.targets, "the retry runs on the snapshot, not on the inventory's new state"
        metrics = parse_samples((await client.get("/metrics")).text)
        assert value(metrics, "ahop_host_runs_total", status="lost") == 2.0


async def test_a_task_cancelled_before_it_started_cancels_its_host_runs(
    client: Client, alice: Caller, origin: Path, tmp_path: Path
) -> None:
    task = await _task(client, alice, origin, tmp_path)
    cancelled = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.OPERATOR])
    assert cancelled.status_code == 200, cancelled.text
    runs = await _runs(client, alice, task)
    assert {(run["status"], run["error"]) for run in runs.values()} == {("cancelled", "cancelled before it started")}
    assert len(runs) == 3
    assert (await show(client, alice, task["id"]))["status"] == "cancelled"
