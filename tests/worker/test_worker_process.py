"""A real `ahop worker` process driven through the job protocol alone: jobs in, events and log lines out."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from redis.asyncio import Redis

from app.devstack.processes import free_ports
from app.devstack.redis import RedisServer
from tests.support import waiting
from tests.support.fleet import Fleet
from tests.support.jobs import Publish, a_job, enqueue, events_of, log_of, script_blob
from worker.protocol import (
    EVENTS_STREAM,
    PROTOCOL_VERSION,
    BlobRef,
    Event,
    LogLine,
    cancel_key,
    deserialize,
    job_id,
    legacy_log_stream,
    queue_name,
    serialize,
)


@pytest.fixture
def template(tmp_path: Path, publish: Publish) -> BlobRef:
    directory = tmp_path / "template"
    directory.mkdir()
    (directory / "run.sh").write_text('#!/bin/bash\necho "hello $AHOP_PARAM_WHO"\necho "args: $*"\n')
    (directory / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")
    return publish(directory)


async def wait_for_log(fleet: Fleet, name: str, text: str, bound: float = 30) -> None:
    async def logged() -> bool:
        return text in fleet.log(name)

    await waiting.until(logged, f"{text!r} in the log of worker {name}", bound)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_job_runs_and_reports_started_then_finished_with_its_output(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef
) -> None:
    fleet.start("w1")
    job = a_job(template)
    await enqueue(queue, job)
    events = await events_of(redis, job.task_id)
    assert [event.type for event in events] == ["started", "finished"]
    assert {event.worker for event in events} == {"w1"}
    finished = events[-1]
    assert (finished.status, finished.exit_code, finished.log_lines, finished.log_truncated) == ("success", 0, 2, False)
    assert [(line.seq, line.line) for line in await log_of(redis, job.task_id)] == [
        (1, "hello ops"),
        (2, "args: --who ops"),
    ]


async def test_each_attempt_writes_its_own_stream_with_its_lines_tagged(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef
) -> None:
    fleet.start("w1")
    first = a_job(template)
    second = a_job(template, task_id=first.task_id, attempt=2, params={"who": "again"})
    for job in (first, second):
        await enqueue(queue, job)

        async def finished(attempt: int = job.attempt) -> bool:
            events = await events_of(redis, first.task_id)
            return any(event.type == "finished" and event.attempt == attempt for event in events)

        await waiting.until(finished, f"attempt {job.attempt} to finish")
    assert [(line.attempt, line.seq, line.line) for line in await log_of(redis, first.task_id, 1)] == [
        (1, 1, "hello ops"),
        (1, 2, "args: --who ops"),
    ]
    assert [(line.attempt, line.seq, line.line) for line in await log_of(redis, first.task_id, 2)] == [
        (2, 1, "hello again"),
        (2, 2, "args: --who again"),
    ]
    assert await redis.exists(legacy_log_stream(first.task_id)) == 0


async def test_a_version_1_job_still_runs_and_writes_the_tasks_shared_stream(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef
) -> None:
    fleet.start("w1")
    job = a_job(template)
    await enqueue(queue, job, {**job.to_wire(), "protocol": 1})  # sent by a server not upgraded yet
    events = await events_of(redis, job.task_id)
    assert (events[-1].status, events[-1].log_lines) == ("success", 2)
    shared = [LogLine.from_fields(fields) for _, fields in await redis.xrange(legacy_log_stream(job.task_id))]
    assert [(line.seq, line.line) for line in shared] == [(1, "hello ops"), (2, "args: --who ops")]
    assert await log_of(redis, job.task_id) == []


async def test_a_job_delivered_twice_runs_once(fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef) -> None:
    job = a_job(template)
    await enqueue(queue, job)
    await enqueue(queue, job, suffix=":again")  # the same attempt under another arq id: a redelivery
    fleet.start("w1")
    deliveries = [job_id(job.task_id, job.attempt) + suffix for suffix in ("", ":again")]
    results = [
        await Job(name, queue, _queue_name=queue_name("default"), _deserializer=deserialize).result(timeout=60)
        for name in deliveries
    ]
    assert sorted(result["status"] for result in results) == ["duplicate", "success"]
    events = await events_of(redis, job.task_id)
    assert [event.type for event in events] == ["started", "finished"]
    assert len(await log_of(redis, job.task_id)) == 2


async def test_an_unknown_protocol_version_is_refused_with_an_event(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef
) -> None:
    fleet.start("w1")
    job = a_job(template)
    await enqueue(queue, job, {**job.to_wire(), "protocol": PROTOCOL_VERSION + 1})
    (finished,) = await events_of(redis, job.task_id)
    assert finished.status == "failed"
    assert f"version {PROTOCOL_VERSION + 1}" in (finished.error or "")
    assert await log_of(redis, job.task_id) == []


async def test_a_cancel_before_the_start_means_the_script_never_runs(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef
) -> None:
    job = a_job(template)
    await redis.set(cancel_key(job.task_id), "1")
    await enqueue(queue, job)
    fleet.start("w1")
    (finished,) = await events_of(redis, job.task_id)
    assert (finished.type, finished.status) == ("finished", "cancelled")
    assert await log_of(redis, job.task_id) == []


async def test_output_beyond_the_limit_keeps_the_newest_lines(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish
) -> None:
    blob = script_blob(tmp_path, publish, "chatty", "for i in $(seq 1 500); do echo line $i; done\n")
    fleet.start("w1")
    job = a_job(blob, params={}, log_limit=100)
    await enqueue(queue, job)
    finished = (await events_of(redis, job.task_id))[-1]
    assert (finished.status, finished.log_lines, finished.log_truncated) == ("success", 500, True)
    lines = await log_of(redis, job.task_id)
    assert [line.seq for line in lines] == list(range(401, 501))
    assert lines[-1].line == "line 500"


async def test_on_sigterm_a_worker_takes_no_new_job_and_lets_the_running_one_finish(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish
) -> None:
    blob = script_blob(tmp_path, publish, "slow", "echo started\nsleep 2\necho done\n")
    worker = fleet.start("w1", AHOP_WORKER_SHUTDOWN_GRACE="60")
    running = a_job(blob, params={})
    await enqueue(queue, running)
    await events_of(redis, running.task_id, until="started")
    worker.popen.send_signal(signal.SIGTERM)
    await wait_for_log(fleet, "w1", "allow_pick_jobs")  # arq has stopped taking jobs
    later = a_job(blob, params={})
    await enqueue(queue, later)
    finished = (await events_of(redis, running.task_id))[-1]
    assert (finished.status, finished.exit_code) == ("success", 0)
    assert [line.line for line in await log_of(redis, running.task_id)] == ["started", "done"]
    await asyncio.to_thread(worker.popen.wait, 60)
    assert [
        event
        for _, fields in await redis.xrange(EVENTS_STREAM)
        if (event := Event.from_fields(fields)).task_id == later.task_id
    ] == []
    assert await redis.zcard(queue_name("default")) == 1  # still queued for another worker


async def test_a_short_redis_outage_during_a_run_loses_neither_the_output_nor_the_outcome(
    worker_env: dict[str, str], tmp_path: Path, publish: Publish
) -> None:
    server = RedisServer.start(tmp_path / "own-redis", durable=True)
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": server.url()}, tmp_path / "own-logs")
    blob = script_blob(tmp_path, publish, "steady", "echo before\nsleep 4\necho after\n")
    try:
        fleet.start("w1")
        pool = await create_pool(RedisSettings.from_dsn(server.url()), job_serializer=serialize)
        job = a_job(blob, params={})
        await enqueue(pool, job)
        client = Redis.from_url(server.url())
        await events_of(client, job.task_id, until="started")
        await pool.aclose()
        await client.aclose()
        server.stop()  # the append-only file keeps what was written
        await asyncio.sleep(1)
        server = RedisServer.launch(tmp_path / "own-redis", durable=True, port=server.port)
        server.wait_ready()
        client = Redis.from_url(server.url())
        finished = (await events_of(client, job.task_id))[-1]
        assert (finished.status, finished.exit_code) == ("success", 0)
        assert [line.line for line in await log_of(client, job.task_id)] == ["before", "after"]
        await client.aclose()
    finally:
        fleet.stop_all()
        server.stop()


async def test_a_worker_started_before_redis_waits_for_it_and_then_takes_jobs(
    worker_env: dict[str, str], tmp_path: Path, publish: Publish
) -> None:
    (port,) = free_ports(1)
    url = f"redis://127.0.0.1:{port}/0"
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": url}, tmp_path / "own-logs")
    blob = script_blob(tmp_path, publish, "late", "echo late\n")
    server: RedisServer | None = None
    try:
        worker = fleet.launch("w1")
        await wait_for_log(fleet, "w1", f"Redis at 127.0.0.1:{port}/0 is unavailable")
        assert worker.popen.poll() is None, f"the worker gave up while Redis was away:\n{fleet.log('w1')}"
        server = RedisServer.launch(tmp_path / "own-redis", durable=False, port=port)
        server.wait_ready()
        pool = await create_pool(RedisSettings.from_dsn(url), job_serializer=serialize)
        job = a_job(blob, params={})
        await enqueue(pool, job)
        client = Redis.from_url(url)
        finished = (await events_of(client, job.task_id))[-1]
        assert (finished.status, finished.exit_code) == ("success", 0)
        await pool.aclose()
        await client.aclose()
        assert fleet.log("w1").count("is unavailable") == 1  # the outage is logged once, however long it lasts
    finally:
        fleet.stop_all()
        if server is not None:
            server.stop()


async def test_a_worker_whose_redis_refuses_its_settings_exits_naming_where_never_the_password(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A password Redis does not take and a database it does not have: no outage to wait out, a setting to fix."""
    where = urlsplit(worker_env["AHOP_REDIS_URL"])
    url = f"redis://:sekrit-{secrets.token_hex(4)}@{where.hostname}:{where.port}/99"
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": url}, tmp_path / "own-logs")
    try:
        worker = fleet.launch("w1")
        assert await asyncio.to_thread(worker.popen.wait, 60) == 3, fleet.log("w1")
        said = fleet.log("w1")
        assert f"Redis unavailable at {where.hostname}:{where.port}/99" in said, said
        assert "sekrit" not in said
    finally:
        fleet.stop_all()
