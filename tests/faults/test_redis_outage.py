"""Redis goes away under running workers and comes back: the workers stay up, deliver, and take jobs again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from app.devstack.redis import RedisServer
from tests.support import blob_fixtures, waiting
from tests.support.fleet import Fleet
from tests.support.jobs import Publish, a_job, events_of, log_of, script_blob
from worker.protocol import RUN_JOB, TaskJob, job_id, queue_name, serialize

# The workers' fixtures: the session bucket, and publishing a directory into it.
s3_location = blob_fixtures.s3_location
blobs = blob_fixtures.blobs
publish = blob_fixtures.publish

OUTAGE = "is unavailable"
RECOVERY = "is available again"


async def enqueue_on(redis_url: str, pool: str, job: TaskJob) -> None:
    queue = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize)
    try:
        queued = await queue.enqueue_job(
            RUN_JOB, job.to_wire(), _job_id=job_id(job.task_id, job.attempt), _queue_name=queue_name(pool)
        )
        assert queued is not None
    finally:
        await queue.aclose()


def full_log(fleet: Fleet, name: str) -> str:
    return (fleet.logs / f"{name}.log").read_text(errors="replace")


async def logged(fleet: Fleet, name: str, text: str) -> None:
    async def seen() -> bool:
        return text in full_log(fleet, name)

    await waiting.until(seen, f"{text!r} in the log of worker {name}", 60)


@pytest.mark.parametrize("keeps_data", [True, False], ids=["back-with-its-aof", "back-empty"])
async def test_a_busy_and_an_idle_worker_outlast_a_redis_outage_and_run_new_tasks(
    keeps_data: bool, worker_env: dict[str, str], tmp_path: Path, publish: Publish
) -> None:
    server = RedisServer.start(tmp_path / "own-redis", durable=keeps_data)
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": server.url()}, tmp_path / "own-logs")
    go = tmp_path / "go"
    script = f"echo before\nwhile [ ! -e {go} ]; do sleep 0.1; done\necho after\n"  # runs until the test says
    waits = script_blob(tmp_path, publish, "waits", script)
    quick = script_blob(tmp_path, publish, "quick", "echo hello\n")
    try:
        busy = fleet.start("busy", AHOP_WORKER_POOL="busy")
        idle = fleet.start("idle", AHOP_WORKER_POOL="idle")
        running = a_job(waits, params={})
        await enqueue_on(server.url(), "busy", running)
        async with Redis.from_url(server.url()) as client:

            async def said_before() -> bool:
                return [line.line for line in await log_of(client, running.task_id)] == ["before"]

            # Once Redis has acknowledged the line: one sent as it stops may be stored and then sent again.
            await waiting.until(said_before, "the first line of the busy worker's script")

        if keeps_data:
            server.stop()  # SIGTERM: the append-only file keeps what was written
        else:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.popen.wait(30)
        for name in ("busy", "idle"):
            await logged(fleet, name, OUTAGE)
        go.touch()  # the busy worker's script ends while Redis is away: its outcome must wait for Redis
        server = RedisServer.launch(tmp_path / "own-redis", durable=keeps_data, port=server.port)
        server.wait_ready()

        async with Redis.from_url(server.url()) as client:
            finished = (await events_of(client, running.task_id))[-1]
            assert (finished.status, finished.exit_code, finished.worker) == ("success", 0, "busy")
            if keeps_data:
                assert [line.line for line in await log_of(client, running.task_id)] == ["before", "after"]
            for name in ("busy", "idle"):
                later = a_job(quick, params={})
                await enqueue_on(server.url(), name, later)
                done = (await events_of(client, later.task_id))[-1]
                assert (done.status, done.worker) == ("success", name)
                assert [line.line for line in await log_of(client, later.task_id)] == ["hello"]

        assert busy.running()  # the same processes: neither was restarted
        assert idle.running()
        for name in ("busy", "idle"):
            await logged(fleet, name, RECOVERY)
            text = full_log(fleet, name)
            assert (text.count(OUTAGE), text.count(RECOVERY)) == (1, 1), text
    finally:
        fleet.stop_all()
        server.stop()
