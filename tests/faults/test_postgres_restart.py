"""PostgreSQL stops (fast shutdown) or dies (SIGKILL of the postmaster) under the API, its control loop and a busy
worker, and starts again on its data: meanwhile the API answers 503 and the loop waits, saying so once; afterwards
every task ends once, with the results its worker reported while the database was away (they waited in Redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from litestar.testing import AsyncTestClient

from app.db import migrate
from app.db.models import Role
from app.devstack.postgres import PostgresServer, ensure_database
from app.main import create_app
from app.settings import AppSettings
from tests.faults.waiters import Waiters, finished_events, ran_once, said_once
from tests.support import waiting
from tests.support.api import Client
from tests.support.fleet import Fleet
from tests.support.tenants import make_tenant

BOUND = 90.0
"""Every wait's bound: it only catches hangs (a loaded machine restarts PostgreSQL slowly)."""
TASKS = 3
"""One runs on the worker (it takes one job at a time) while the others wait in its queue."""
OUTAGE = "the database is unavailable"
RECOVERY = "the database is available again"


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
    settings = api_settings.model_copy(update={"database_url": database_of, "control_interval": 0.2})
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


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


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_tasks_running_and_queued_end_once_when_postgres_restarts_under_the_control_loop(
    how: str,
    server: Client,
    database_of: str,
    own_postgres: PostgresServer,
    fleet: Fleet,
    tmp_path: Path,
    worker_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ahop.control")
    waiters = Waiters(server, await make_tenant(database_of), tmp_path)
    await waiters.import_template()
    fleet.start("w1", AHOP_WORKER_MAX_JOBS="1")
    ids = await waiters.start(TASKS)
    await waiters.wait_one_running_others_queued(ids, BOUND)

    await take_down(own_postgres, how)
    answer = await waiters.get(ids[0])
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"].startswith("the database is unavailable"), answer.text
    refused = await waiters.post()
    assert refused.status_code == 503, refused.text
    ready = await server.get("/health/ready")
    assert (ready.status_code, ready.json()["database"].startswith("unavailable")) == (503, True), ready.text

    waiters.release()  # every task runs to its end while the database is away: the results wait in Redis

    async def all_reported() -> bool:
        return await finished_events(worker_env["AHOP_REDIS_URL"]) == set(ids)

    await waiting.until(all_reported, "the worker to report every task's end", BOUND)

    own_postgres.process.respawn()  # on the same data directory and port
    done = await waiters.wait_all_ended(ids, BOUND)  # 503 while it starts (and recovers, after a kill), never 500
    assert [(task["status"], task["exit_code"], task["attempt"]) for task in done] == [("success", 0, 1)] * TASKS
    for task_id in ids:
        assert await waiters.output(task_id) == ["started", "finished"]
    assert waiters.runs() == ran_once(ids)

    later = await waiters.start(1)  # the API and the loop work again: a new task is sent and runs
    assert [task["status"] for task in await waiters.wait_all_ended(later, BOUND)] == ["success"]
    await said_once(caplog.records, OUTAGE, RECOVERY, BOUND)


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
