"""Workers as the API shows them: the list, which workers hold a template, prefetch on request and on import."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.db.models import Role
from app.devstack.processes import free_ports
from app.main import create_app
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.support.api import Client
from tests.support.fleet import Fleet
from tests.support.repositories import add_repository, git
from tests.support.s3 import s3_client
from tests.support.templates import body
from tests.support.tenants import Caller
from tests.support.workers import beat
from worker.protocol import WORKERS_KEY, BlobRef, worker_digests_key, worker_inbox_key


@pytest.fixture
async def redis(api_settings: AppSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(api_settings.redis_url)
    yield client
    await client.aclose()


async def inbox(redis: Redis, worker_id: str) -> list[BlobRef]:
    messages = await redis.lrange(worker_inbox_key(worker_id), 0, -1)  # type: ignore[misc]
    return [BlobRef.from_wire(json.loads(message)) for message in messages]


async def import_template(client: Client, caller: Caller, origin: Path, **overrides: Any) -> dict[str, Any]:
    repository_id = await add_repository(client, caller, origin)
    response = await client.post(
        "/api/v1/task-templates", json=body(repository_id, **overrides), headers=caller[Role.ADMIN]
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def stored_ref(settings: AppSettings, artifact: dict[str, Any]) -> BlobRef:
    """The blob reference a worker needs, from the template's artifact and the object actually in S3."""
    digest = Digest.parse(artifact["digest"])
    stored = (
        s3_client(settings.s3_location()).get_object(Bucket=settings.s3_bucket, Key=blob_key(digest))["Body"].read()
    )
    return BlobRef(
        digest=digest,
        tar_size=artifact["tar_size"],
        zst_size=len(stored),
        zst_sha256=hashlib.sha256(stored).hexdigest(),
        files=artifact["files"],
    )


async def test_workers_list_shows_live_and_dead_workers_to_every_tenant(
    client: Client, alice: Caller, bob: Caller, redis: Redis
) -> None:
    await beat(redis, "w-live", running=("t1", "t2"), pools=("default", "gpu"))
    await beat(redis, "w-dead", age=120)  # older than the default heartbeat_timeout of 30 s
    await beat(redis, "w-gone", age=3 * 86400, digests=("a" * 64,))  # older than worker_forget_after (a day)
    await redis.rpush(worker_inbox_key("w-gone"), "{}")  # type: ignore[misc]

    response = await client.get("/api/v1/workers", headers=alice[Role.VIEWER])
    assert response.status_code == 200, response.text
    listed = response.json()
    assert (listed["total"], listed["live"]) == (2, 1)
    assert [(item["id"], item["live"]) for item in listed["items"]] == [("w-dead", False), ("w-live", True)]
    dead, live = listed["items"]
    assert (live["host"], live["pools"], live["running"]) == ("w-live.example", ["default", "gpu"], 2)
    assert (live["cache_bytes"], live["cache_entries"], live["downloads"], live["version"]) == (1 << 20, 0, 3, "1.2.3")
    assert live["last_seen"].endswith("Z")
    assert live["started_at"].endswith("Z")
    assert live["age_seconds"] < dead["age_seconds"]
    assert 120 <= dead["age_seconds"] < 3 * 86400

    # The long-dead worker was forgotten, with its digests and its inbox.
    assert await redis.hexists(WORKERS_KEY, "w-gone") == 0  # type: ignore[misc]
    assert await redis.exists(worker_digests_key("w-gone"), worker_inbox_key("w-gone")) == 0

    assert (await client.get("/api/v1/workers", headers=bob[Role.VIEWER])).json()["total"] == 2
    assert (await client.get("/api/v1/workers")).status_code == 401


async def test_a_heartbeat_timeout_setting_decides_who_is_live(
    api_settings: AppSettings, alice: Caller, redis: Redis
) -> None:
    await beat(redis, "w-slow", age=10)
    settings = api_settings.model_copy(update={"heartbeat_timeout": 5.0})
    async with AsyncTestClient(create_app(settings)) as client:
        listed = (await client.get("/api/v1/workers", headers=alice[Role.VIEWER])).json()
    assert [(item["id"], item["live"]) for item in listed["items"]] == [("w-slow", False)]


async def test_a_template_shows_the_live_workers_of_its_pool_that_hold_it(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin)
    assert template["workers"] == []  # nobody holds it yet
    digest = Digest.parse(template["artifact"]["digest"]).hex
    await beat(redis, "w-hold", digests=(digest, "b" * 64))
    await beat(redis, "w-cold", digests=("b" * 64,))
    await beat(redis, "w-dead", age=600, digests=(digest,))
    await beat(redis, "w-gpu", pools=("gpu",), digests=(digest,))

    url = f"/api/v1/task-templates/{template['id']}"
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert shown["workers"] == [{"id": "w-hold", "host": "w-hold.example", "live": True}]

    moved = await client.put(url, json={"pool": "gpu"}, headers=alice[Role.ADMIN])
    assert moved.status_code == 200, moved.text
    assert moved.json()["workers"] == [{"id": "w-gpu", "host": "w-gpu.example", "live": True}]
    assert (await client.get(url, headers=alice[Role.VIEWER])).json()["workers"] == moved.json()["workers"]


async def test_prefetch_asks_each_live_worker_of_the_pool_once(
    client: Client, alice: Caller, bob: Caller, origin: Path, redis: Redis, api_settings: AppSettings
) -> None:
    template = await import_template(client, alice, origin)
    for worker_id in ("w-a", "w-b"):
        await beat(redis, worker_id)
    await beat(redis, "w-dead", age=600)
    await beat(redis, "w-gpu", pools=("gpu",))
    assert [await inbox(redis, w) for w in ("w-a", "w-b", "w-dead", "w-gpu")] == [[], [], [], []]  # not on import

    url = f"/api/v1/task-templates/{template['id']}/prefetch"
    response = await client.post(url, headers=alice[Role.OPERATOR])
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["digest"], answer["pool"], answer["workers"]) == (
        template["artifact"]["digest"],
        "default",
        ["w-a", "w-b"],
    )
    expected = stored_ref(api_settings, template["artifact"])
    assert await inbox(redis, "w-a") == [expected]
    assert await inbox(redis, "w-b") == [expected]
    assert await inbox(redis, "w-dead") == []
    assert await inbox(redis, "w-gpu") == []

    assert (await client.post(url, headers=alice[Role.VIEWER])).status_code == 403
    assert (await client.post(url, headers=bob[Role.ADMIN])).status_code == 404
    assert await inbox(redis, "w-a") == [expected]


async def test_prefetch_with_no_live_worker_answers_202_and_says_so(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin, pool="night-batch")
    await beat(redis, "w-default")
    await beat(redis, "w-old", pools=("night-batch",), age=600)
    response = await client.post(f"/api/v1/task-templates/{template['id']}/prefetch", headers=alice[Role.OPERATOR])
    assert response.status_code == 202, response.text
    assert response.json()["workers"] == []
    assert "no worker of pool 'night-batch' is live" in response.json()["detail"]
    assert await inbox(redis, "w-default") == []
    assert await inbox(redis, "w-old") == []


async def test_prefetch_on_import_asks_the_pool_after_an_import_and_a_changing_sync(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis
) -> None:
    await beat(redis, "w-default")
    await beat(redis, "w-gpu", pools=("gpu",))
    settings = api_settings.model_copy(update={"prefetch_on_import": True})
    async with AsyncTestClient(create_app(settings)) as client:
        template = await import_template(client, alice, origin)
        first = stored_ref(settings, template["artifact"])
        assert await inbox(redis, "w-default") == [first]

        url = f"/api/v1/task-templates/{template['id']}"
        assert (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()["changed"] is False
        assert await inbox(redis, "w-default") == [first]  # an unchanged sync asks nothing

        (origin / "scripts" / "disk_cleanup" / "cleanup.sh").write_text("#!/bin/bash\necho v2\n")
        git(origin, "commit", "-qam", "v2")
        assert (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()["changed"] is True
        synced = (await client.get(url, headers=alice[Role.VIEWER])).json()
    second = stored_ref(settings, synced["artifact"])
    assert second.digest != first.digest
    assert await inbox(redis, "w-default") == [first, second]
    assert await inbox(redis, "w-gpu") == []


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_an_import_succeeds_when_redis_is_down(api_settings: AppSettings, alice: Caller, origin: Path) -> None:
    (closed_port,) = free_ports(1)
    settings = api_settings.model_copy(
        update={"prefetch_on_import": True, "redis_url": f"redis://127.0.0.1:{closed_port}/0"}
    )
    collected, logger = Collected(), logging.getLogger("ahop.workers")
    async with AsyncTestClient(create_app(settings)) as client:
        logger.addHandler(collected)  # the application's logging setup replaces the root's handlers
        try:
            template = await import_template(client, alice, origin)
        finally:
            logger.removeHandler(collected)
        assert any(m.startswith("prefetch of sha256:") and "Redis is unavailable" in m for m in collected.messages)
        assert template["artifact"]["digest"].startswith("sha256:")
        assert template["workers"] is None  # unknown, not "nobody"
        listed = await client.get("/api/v1/workers", headers=alice[Role.VIEWER])
        prefetch = await client.post(f"/api/v1/task-templates/{template['id']}/prefetch", headers=alice[Role.ADMIN])
    for response in (listed, prefetch):
        assert response.status_code == 503, response.text
        assert "Redis" in response.json()["detail"]


async def test_a_real_worker_prefetches_and_then_holds_the_template(
    client: Client, alice: Caller, origin: Path, worker_env: dict[str, str], tmp_path: Path
) -> None:
    template = await import_template(client, alice, origin)
    fleet = Fleet(worker_env, tmp_path / "worker-logs")
    try:
        await asyncio.to_thread(fleet.start, "w-real")
        url = f"/api/v1/task-templates/{template['id']}"
        asked = await client.post(f"{url}/prefetch", headers=alice[Role.OPERATOR])
        assert asked.json()["workers"] == ["w-real"], asked.text
        deadline = time.monotonic() + 30  # only catches a hang
        while (shown := (await client.get(url, headers=alice[Role.VIEWER])).json())["workers"] == []:
            assert time.monotonic() < deadline, f"w-real never reported the digest; log:\n{fleet.log('w-real')}"
            await asyncio.sleep(0.1)
        assert shown["workers"] == [{"id": "w-real", "host": socket.gethostname(), "live": True}]
        listed = (await client.get("/api/v1/workers", headers=alice[Role.VIEWER])).json()
        assert [(item["id"], item["downloads"], item["cache_entries"]) for item in listed["items"]] == [
            ("w-real", 1, 1)
        ]
    finally:
        await asyncio.to_thread(fleet.stop_all)
    after = (await client.get("/api/v1/workers", headers=alice[Role.VIEWER])).json()
    assert after["total"] == 0  # a worker that stops cleanly leaves the list
