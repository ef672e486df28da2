"""A real worker's metrics port: cache misses, downloads and hits, running tasks; a taken port costs only metrics."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from tests.support import waiting
from tests.support.fleet import Fleet
from tests.support.jobs import Publish, a_job, enqueue, events_of, script_blob
from tests.support.metrics_text import Samples, parse_samples, value


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_on(port: int) -> dict[str, str]:
    return {"AHOP_WORKER_METRICS_PORT": str(port), "AHOP_WORKER_METRICS_HOST": "127.0.0.1"}


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


async def test_a_worker_counts_a_miss_with_its_download_then_a_hit_and_its_running_tasks(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish
) -> None:
    gate = tmp_path / "gate"
    blob = script_blob(tmp_path, publish, "gated", f"while [ ! -e {gate} ]; do sleep 0.05; done\necho through\n")
    port = free_port()
    fleet.start("w1", **metrics_on(port))
    idle = await scrape(port)
    for name in ("ahop_worker_cache_hits_total", "ahop_worker_cache_misses_total", "ahop_worker_running_tasks"):
        assert value(idle, name) == 0
    assert value(idle, "ahop_worker_cache_bytes") == 0

    first = a_job(blob, params={})
    await enqueue(queue, first)
    await events_of(redis, first.task_id, until="started")
    assert value(await scrape(port), "ahop_worker_running_tasks") == 1
    gate.touch()
    assert (await events_of(redis, first.task_id))[-1].status == "success"

    async def idle_again() -> Samples | None:
        samples = await scrape(port)
        return samples if value(samples, "ahop_worker_running_tasks") == 0 else None

    after_first: Samples = await waiting.until(idle_again, "no running task on the worker")
    assert value(after_first, "ahop_worker_cache_misses_total") == 1
    assert value(after_first, "ahop_worker_cache_hits_total") == 0
    assert value(after_first, "ahop_worker_downloads_total", result="ok") == 1
    assert value(after_first, "ahop_worker_download_bytes_total") == blob.zst_size > 0
    assert value(after_first, "ahop_worker_unpack_seconds_count") == 1
    assert value(after_first, "ahop_worker_cache_bytes") > 0
    assert value(after_first, "ahop_worker_cache_entries") == 1

    second = a_job(blob, params={})
    await enqueue(queue, second)
    assert (await events_of(redis, second.task_id))[-1].status == "success"
    after_second: Samples = await waiting.until(idle_again, "no running task on the worker")
    assert value(after_second, "ahop_worker_cache_hits_total") == 1
    assert value(after_second, "ahop_worker_cache_misses_total") == 1
    assert value(after_second, "ahop_worker_downloads_total", result="ok") == 1
    assert value(after_second, "ahop_worker_download_bytes_total") == blob.zst_size


async def test_a_taken_metrics_port_leaves_the_worker_running_tasks_and_says_so(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        fleet.start("w1", **metrics_on(port))
        job = a_job(script_blob(tmp_path, publish, "plain", "echo fine\n"), params={})
        await enqueue(queue, job)
        assert (await events_of(redis, job.task_id))[-1].status == "success"
    log = (fleet.logs / "w1.log").read_text()
    assert f"metrics port {port} on 127.0.0.1 is taken" in log
    assert "AHOP_WORKER_METRICS_PORT" in log
