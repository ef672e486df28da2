"""`ahop dev` keeps its stack up: a worker that dies is started again, said so, and the stack keeps answering."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from arq import create_pool
from arq.connections import RedisSettings

from app.devstack.stack import LocalStack
from tests.support.dev_runs import answers_ready, clean_env, recorded_pid, running_dev
from worker.protocol import DEFAULT_POOL, PING_JOB, deserialize, queue_name, serialize

BOUND = 120.0  # generous: only catches a hang


def kill_and_wait_for_another(process: subprocess.Popen[str], state_dir: Path, name: str) -> int:
    """SIGKILL the process `ahop dev` started as `name`; return the pid of the one that takes its place."""
    first = recorded_pid(state_dir, name)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + BOUND
    while (second := recorded_pid(state_dir, name)) in (None, first) or not psutil.pid_exists(second):
        assert process.poll() is None, f"ahop dev stopped when its {name} died"
        assert time.monotonic() < deadline, f"no new {name} came up"
        time.sleep(0.1)
    return second


async def ping(redis_url: str) -> str:
    """Who answers a ping job of the default pool: `host:pid` of a worker."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize)
    try:
        job = await pool.enqueue_job(PING_JOB, _queue_name=queue_name(DEFAULT_POOL))
        assert job is not None
        result = await job.result(timeout=BOUND, poll_delay=0.05)
        return str(result["worker"])
    finally:
        await pool.aclose()


def wait_ready(api_url: str) -> None:
    deadline = time.monotonic() + BOUND
    while not answers_ready(api_url):
        assert time.monotonic() < deadline, "the API did not answer again"
        time.sleep(0.1)


def test_dev_starts_a_killed_worker_or_api_again_and_the_stack_keeps_answering(
    tmp_path: Path, stack: LocalStack, database_url: str, redis_url: str, bucket: str
) -> None:
    state_dir = tmp_path / "state"
    given = {
        **clean_env(),
        "AHOP_DATABASE_URL": database_url,
        "AHOP_REDIS_URL": redis_url,
        "AHOP_S3_ENDPOINT_URL": stack.env["AHOP_S3_ENDPOINT_URL"],
        "AHOP_S3_ACCESS_KEY_ID": stack.env["AHOP_S3_ACCESS_KEY_ID"],
        "AHOP_S3_SECRET_ACCESS_KEY": stack.env["AHOP_S3_SECRET_ACCESS_KEY"],
        "AHOP_S3_BUCKET": bucket,
    }
    with running_dev(state_dir, given) as (process, env):
        second = kill_and_wait_for_another(process, state_dir, "worker")
        assert asyncio.run(ping(redis_url)).endswith(f":{second}")  # the new worker takes jobs
        assert answers_ready(env["AHOP_API_URL"])
        said = f"worker was killed by SIGKILL; restarting it in 1 s (its log: {state_dir.resolve()}/logs/worker.log)"
        assert said in (state_dir / "logs" / "worker.log").read_text()
        assert f"worker restarted (pid {second})" in (state_dir / "logs" / "worker.log").read_text()
        outputs = [path.read_text() for path in tmp_path.glob("ahop-dev-*.out")]
        assert any(said in output and f"worker restarted (pid {second})" in output for output in outputs)

        api = kill_and_wait_for_another(process, state_dir, "api")
        wait_ready(env["AHOP_API_URL"])
        assert f"API restarted (pid {api})" in (state_dir / "logs" / "api.log").read_text()
        assert process.poll() is None
