"""Redis dies (SIGKILL) under the API, its control loop and a busy worker, and comes back with its data (the
append-only file) or empty: either way every task ends once. Jobs that vanished with an empty Redis never started,
so the control loop sends them again (DESIGN §5); the task that was running finishes on its worker and is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.devstack.redis import RedisServer
from app.main import create_app
from app.settings import AppSettings
from tests.faults.waiters import Waiters, ran_once, said_once
from tests.support.api import Client
from tests.support.fleet import Fleet
from tests.support.tenants import Caller

BOUND = 90.0
"""Every wait's bound: it only catches hangs."""
TASKS = 3
"""One runs on the worker (it takes one job at a time) while the others wait in its queue."""
OUTAGE = "Redis is unavailable"
RECOVERY = "Redis is available again"


@pytest.fixture(params=[True, False], ids=["back-with-its-aof", "back-empty"])
def keeps_data(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def own_redis(keeps_data: bool, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone; keeping its data, it writes an append-only file, which outlives a SIGKILL."""
    server = RedisServer.start(tmp_path / "own-redis", durable=keeps_data)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def server(api_settings: AppSettings, own_redis: RedisServer) -> AsyncIterator[Client]:
    # A queued task whose job vanished is sent again after a second, not thirty.
    settings = api_settings.model_copy(
        update={"redis_url": own_redis.url(), "control_interval": 0.2, "requeue_after": 1.0}
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def test_running_and_queued_tasks_end_once_after_redis_is_killed_and_restarted(
    keeps_data: bool,
    server: Client,
    own_redis: RedisServer,
    alice: Caller,
    worker_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ahop.control")
    waiters = Waiters(server, alice, tmp_path)
    await waiters.import_template()
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": own_redis.url()}, tmp_path / "own-logs")
    try:
        fleet.start("w1", AHOP_WORKER_MAX_JOBS="1")
        ids = await waiters.start(TASKS)
        await waiters.wait_one_running_others_queued(ids, BOUND)
        running = ids[(await waiters.statuses(ids)).index("running")]

        os.kill(own_redis.process.pid, signal.SIGKILL)
        await asyncio.to_thread(own_redis.process.popen.wait, BOUND)
        waiters.release()  # the running task ends while Redis is away: its worker holds the result
        own_redis.process.respawn()  # the same port; the append-only file, when there is one
        await asyncio.to_thread(own_redis.wait_ready, BOUND)

        done = await waiters.wait_all_ended(ids, BOUND)
        assert [(task["status"], task["exit_code"]) for task in done] == [("success", 0)] * TASKS, done
        for task_id in ids:
            # The running task's output waits in Redis until it ends: an empty Redis lost the lines it held, though
            # a line whose write the worker had not seen acknowledged yet is sent again.
            whole = [["started", "finished"]]
            expected = [["finished"], *whole] if task_id == running and not keeps_data else whole
            assert await waiters.output(task_id) in expected, task_id
        assert waiters.runs() == ran_once(ids)
        assert fleet.started["w1"].running()  # the same worker ran them all
    finally:
        fleet.stop_all()
    await said_once(caplog.records, OUTAGE, RECOVERY, BOUND)
