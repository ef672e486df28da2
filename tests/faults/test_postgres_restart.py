"""PostgreSQL stops (fast shutdown) or dies (SIGKILL of the postmaster) under the API, its control loop and a busy
worker, and starts again on its data: meanwhile the API answers 503 and the loop waits, saying so once; afterwards
every task ends once, with the results its worker reported while the database was away (they waited in Redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.db import migrate
from app.db.models import Role
from app.devstack.postgres import PostgresServer, ensure_database
from app.main import create_app
from app.settings import AppSettings
from tests import waiting
from tests.app.conftest import Caller, git, make_tenant
from tests.app.test_templates import add_repository
from tests.fleet import Fleet
from worker.protocol import EVENTS_STREAM, Event

Client = AsyncTestClient[Litestar]
BOUND = 90.0
"""Every wait's bound: it only catches hangs (a loaded machine restarts PostgreSQL slowly)."""
TASKS = 3
"""One runs on the worker (it takes one job at a time) while the others wait in its queue."""

# Writes down its start, waits until the test says go, writes down its end.
WAITER_SH = """#!/bin/bash
echo "start $AHOP_TASK_ID" >> "$AHOP_PARAM_LEDGER"
echo started
while [ ! -e "$AHOP_PARAM_GO" ]; do sleep 0.1; done
echo "end $AHOP_TASK_ID" >> "$AHOP_PARAM_LEDGER"
echo finished
"""


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone, which it stops, kills and starts again. Durable, as in production:
    a commit must outlive a crash of the server (without fsync and synchronous commit, a SIGKILL may lose it)."""
    server = PostgresServer.start(tmp_path / "own-postgres", durable=True)
    try:
        yield server
    finally:
        server.durable = False  # its data goes with it
        server.stop()


@pytest.fixture
def database_of(own_postgres: PostgresServer) -> str:
    ensure_database(own_postgres.url(), "ahop")
    url = own_postgres.url("ahop")
    migrate.upgrade(url)
    return url


@pytest.fixture
async def server(api_settings: AppSettings, database_of: str) -> AsyncIterator[Client]:
    settings = api_settings.model_copy(
        update={"database_url": database_of, "control_interval": 0.2, "requeue_after": 1.0, "health_timeout": 2.0}
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def waiter_template(client: Client, caller: Caller, root: Path) -> int:
    repo = root / "waiter-origin"
    (repo / "waiter").mkdir(parents=True)
    (repo / "waiter" / "run.sh").write_text(WAITER_SH)
    (repo / "waiter" / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "waiter")
    repository_id = await add_repository(client, caller, repo, name="waiter")
    body = {"name": "waiter", "code": "waiter", "repository_id": repository_id, "original_path": "waiter",
            "script_type": "shell", "entry_file": "run.sh", "timeout": 600,
            "parameters": [{"name": "ledger", "type": "text", "required": True},
                           {"name": "go", "type": "text", "required": True}]}  # fmt: skip
    response = await client.post("/api/v1/task-templates", json=body, headers=caller[Role.ADMIN])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def create(client: Client, caller: Caller, template_id: int, tmp_path: Path) -> Any:
    """POST a task of the waiter template; the answer, whatever its status."""
    params = {"ledger": str(tmp_path / "ledger"), "go": str(tmp_path / "go")}
    return await client.post("/api/v1/tasks", json={"template_id": template_id, "params": params},
                             headers=caller[Role.OPERATOR])  # fmt: skip


async def show(client: Client, caller: Caller, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/{task_id}", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return dict(response.json())


async def statuses(client: Client, caller: Caller, ids: list[str]) -> list[str]:
    return [(await show(client, caller, task_id))["status"] for task_id in ids]


def ledger_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def finished_events(redis_url: str) -> set[str]:
    """The tasks whose `finished` event waits in the events stream, unrecorded."""
    async with Redis.from_url(redis_url) as client:
        entries = await client.xrange(EVENTS_STREAM)
    events = [Event.from_fields({key.decode(): value.decode() for key, value in fields.items()})
              for _, fields in entries]  # fmt: skip
    return {str(event.task_id) for event in events if event.type == "finished"}


def gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


async def take_down(server: PostgresServer, how: str) -> None:
    """Stop the server (SIGINT: a fast shutdown, clients' transactions rolled back) or SIGKILL its postmaster."""
    if how == "stopped":
        await asyncio.to_thread(server.process.stop)
        return
    # Its children (backends, checkpointer, …) notice the death and exit; a new postmaster starts only then.
    children = psutil.Process(server.process.pid).children(recursive=True)
    os.kill(server.process.pid, signal.SIGKILL)
    await asyncio.to_thread(server.process.popen.wait, BOUND)

    async def exited() -> bool:
        return gone(children)

    await waiting.until(exited, "the killed postmaster's children to exit", BOUND)


OUTAGE = "the database is unavailable"
RECOVERY = "the database is available again"


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_tasks_running_and_queued_end_once_when_postgres_restarts_under_the_control_loop(
    how: str, server: Client, database_of: str, own_postgres: PostgresServer, fleet: Fleet, tmp_path: Path,
    worker_env: dict[str, str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="ahop.control")
    alice = await make_tenant(database_of)
    template_id = await waiter_template(server, alice, tmp_path)
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    ledger.touch()
    fleet.start("w1", AHOP_WORKER_MAX_JOBS="1")
    ids = []
    for _ in range(TASKS):
        response = await create(server, alice, template_id, tmp_path)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    async def one_running_others_queued() -> bool:
        return sorted(await statuses(server, alice, ids)) == ["queued", "queued", "running"]

    await waiting.until(one_running_others_queued, "one task running, the others queued", BOUND)

    await take_down(own_postgres, how)
    answer = await server.get(f"/api/v1/tasks/{ids[0]}", headers=alice[Role.VIEWER])
    assert answer.status_code == 503, answer.text
    assert "database is unavailable" in answer.json()["detail"]
    refused = await create(server, alice, template_id, tmp_path)
    assert refused.status_code == 503, refused.text
    ready = await server.get("/health/ready")
    assert (ready.status_code, ready.json()["database"].startswith("unavailable")) == (503, True), ready.text

    go.touch()  # every task runs to its end while the database is away: their results must wait in Redis

    async def all_reported() -> bool:
        return await finished_events(worker_env["AHOP_REDIS_URL"]) == set(ids)

    await waiting.until(all_reported, "the worker to report every task's end", BOUND)

    own_postgres.process.respawn()  # on the same data directory and port

    async def all_done() -> list[dict[str, Any]] | None:
        # While the server starts (and, after a kill, recovers) the API answers 503, never 500.
        tasks = []
        for task_id in ids:
            response = await server.get(f"/api/v1/tasks/{task_id}", headers=alice[Role.VIEWER])
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                return None
            tasks.append(response.json())
        return tasks if all(task["status"] not in {"pending", "queued", "running"} for task in tasks) else None

    done = await waiting.until(all_done, "every task to end", BOUND)
    assert [(task["status"], task["exit_code"], task["attempt"]) for task in done] == [("success", 0, 1)] * TASKS
    for task_id in ids:
        response = await server.get(f"/api/v1/tasks/{task_id}/logs", headers=alice[Role.VIEWER])
        assert response.status_code == 200, response.text
        assert [item["line"] for item in response.json()["items"]] == ["started", "finished"]
    assert sorted(ledger_of(ledger)) == sorted(
        [f"start {task_id}" for task_id in ids] + [f"end {task_id}" for task_id in ids]
    )

    # The API and the loop work again: a new task is sent and runs.
    later = await create(server, alice, template_id, tmp_path)
    assert later.status_code == 201, later.text
    later_id = str(later.json()["id"])

    async def later_done() -> bool:
        return bool((await show(server, alice, later_id))["status"] == "success")

    await waiting.until(later_done, "a task created after the restart to succeed", BOUND)

    said = [record.getMessage() for record in caplog.records if record.name == "ahop.control"]
    assert sum(OUTAGE in line for line in said) == 1, said
    assert sum(RECOVERY in line for line in said) == 1, said


async def test_a_database_that_admits_no_client_yet_answers_503_not_500(
    api_settings: AppSettings, own_postgres: PostgresServer, database_of: str
) -> None:
    alice = await make_tenant(database_of)
    await asyncio.to_thread(own_postgres.process.stop)
    # A standby that runs no queries stays "starting up" for good: what a server recovering after a crash, or one
    # shutting down, answers every client for a while.
    (own_postgres.data_dir / "standby.signal").touch()
    own_postgres.process.argv += ("-c", "hot_standby=off")
    own_postgres.process.respawn()

    async def standing_by() -> bool:
        return "entering standby mode" in own_postgres.process.log_path.read_text(errors="replace")

    await waiting.until(standing_by, "the server to run as a standby", BOUND)
    settings = api_settings.model_copy(update={"database_url": database_of, "control_loop": False})
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/api/v1/tasks", headers=alice[Role.VIEWER])
    assert response.status_code == 503, response.text
    assert response.json()["detail"].startswith("the database is unavailable"), response.text
