"""A worker told to stop while Redis is away stops, leaving no script behind: it does not wait for Redis to hear
how its jobs ended (the server treats that as it treats a worker that died)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from tests.support import blob_fixtures, waiting
from tests.support.fleet import fleet_on_own_redis
from tests.support.jobs import Publish, a_job, enqueue, log_of, script_blob
from worker.protocol import serialize

# The workers' fixtures: the session bucket, and publishing a directory into it.
s3_location = blob_fixtures.s3_location
blobs = blob_fixtures.blobs
publish = blob_fixtures.publish

BOUND = 60.0
"""Far above the worker's stop grace (5 s in the tests): it only catches a worker that never stops."""


async def test_a_busy_worker_stopped_while_redis_is_away_exits_and_leaves_no_script(
    worker_env: dict[str, str], tmp_path: Path, publish: Publish
) -> None:
    sleeps = script_blob(tmp_path, publish, "sleeps", "echo before\nsleep 600\n")
    with fleet_on_own_redis(worker_env, tmp_path, durable=False) as (server, fleet):
        worker = fleet.start("w1")
        job = a_job(sleeps, params={})
        queue = await create_pool(RedisSettings.from_dsn(server.url()), job_serializer=serialize)
        try:
            await enqueue(queue, job)
        finally:
            await queue.aclose()
        async with Redis.from_url(server.url()) as client:

            async def said_before() -> bool:
                return [line.line for line in await log_of(client, job.task_id)] == ["before"]

            await waiting.until(said_before, "the first line of the worker's script")
        attempt = psutil.Process(worker.pid).children(recursive=True)  # its supervisor, the script, its sleep
        assert attempt

        os.kill(server.process.pid, signal.SIGKILL)
        server.process.popen.wait(BOUND)
        log = fleet.logs / "w1.log"

        async def outage_seen() -> bool:
            return "is unavailable" in log.read_text(errors="replace")

        await waiting.until(outage_seen, "the worker to notice that Redis is away", BOUND)
        worker.popen.send_signal(signal.SIGTERM)
        try:
            worker.popen.wait(BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker still runs {BOUND:g} s after SIGTERM: {log.read_text()[-2000:]}"
            ) from None
        _, alive = psutil.wait_procs(attempt, timeout=BOUND)
        assert [process.pid for process in alive] == []
        assert "stopping without reporting how task" in log.read_text(errors="replace")
