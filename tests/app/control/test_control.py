"""The control loop as workers see it: their events recorded once, output moved to Postgres and followed live,
retries when a template opts in, and tasks of dead workers marked lost.

Events and log lines are written the way a worker writes them, through `worker.protocol`'s encoders.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from ahop.task_commands import ServerEvent, parse_events
from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client
from tests.support.database import sql
from tests.support.task_fixtures import (  # noqa: F401  (fixtures of the tests that start tasks)
    cancel_unfinished_tasks,
    fast_api_settings,
    redis_client,
)
from tests.support.tasks import create_task, queued_job, show, task_in
from tests.support.templates import import_template
from tests.support.tenants import Caller
from tests.support.workers import iso, recorded, send, write
from worker.protocol import (
    EVENTS_GROUP,
    EVENTS_STREAM,
    WORKERS_KEY,
    Event,
    Heartbeat,
    LogLine,
    cancel_key,
    log_stream,
)


async def logs(client: Client, caller: Caller, task: dict[str, Any], query: str = "") -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/{task['id']}/logs{query}", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return dict(response.json())


def lines_of(page: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(item["seq"], item["stream"], item["line"]) for item in page["items"]]


async def test_events_are_recorded_once_and_the_output_moves_to_postgres(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    await send(redis, "started", task, worker="w1")
    await write(redis, task, ("stdout", "one"), ("stderr", "two"), ("stdout", "three"))
    running = await task_in(client, alice, task["id"], "running", worker="w1")
    assert running["started_at"].endswith("Z")

    live = await logs(client, alice, task)
    assert lines_of(live) == [(1, "stdout", "one"), (2, "stderr", "two"), (3, "stdout", "three")]
    assert (live["status"], live["truncated"]) == ("running", False)
    assert lines_of(await logs(client, alice, task, "?after=2")) == [(3, "stdout", "three")]

    await send(redis, "finished", task, status="failed", exit_code=3, error=None, log_lines=3)
    done = await task_in(client, alice, task["id"], "failed", exit_code=3)
    assert (done["log_lines"], done["log_truncated"], done["attempt"]) == (3, False, 1)  # no retry by default
    assert done["finished_at"].endswith("Z")
    assert await redis.exists(log_stream(task["id"], 1)) == 0
    stored = await logs(client, alice, task)
    assert lines_of(stored) == lines_of(live)
    assert stored["status"] == "failed"
    assert lines_of(await logs(client, alice, task, "?after=1")) == [(2, "stderr", "two"), (3, "stdout", "three")]

    # A worker's duplicates and stragglers change nothing.
    await send(redis, "started", task, worker="w2")
    await send(redis, "finished", task, worker="w2", status="success", exit_code=0)
    await recorded(redis)
    assert await show(client, alice, task["id"]) == done


async def test_malformed_entries_are_dropped_without_blocking_the_stream(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    good = Event(type="started", task_id=task["id"], attempt=1, worker="w1", at=iso())
    for fields in (
        {"junk": "1"},
        {"event": "{not json"},
        {"event": json.dumps({**good.to_fields(), "type": "exploded"})},
        {"event": json.dumps({"type": "started", "task_id": "not-a-uuid", "attempt": 1, "worker": "w", "at": iso()})},
        {"event": json.dumps({"type": "started", "task_id": task["id"], "attempt": "one", "worker": "w", "at": iso()})},
        Event(type="started", task_id=str(uuid.uuid4()), attempt=1, worker="w1", at=iso()).to_fields(),
    ):
        await redis.xadd(EVENTS_STREAM, fields)  # type: ignore[arg-type]
    await redis.xadd(EVENTS_STREAM, good.to_fields())  # type: ignore[arg-type]
    await task_in(client, alice, task["id"], "running", worker="w1")
    await recorded(redis)


async def test_an_event_left_unrecorded_by_a_dead_server_is_taken_over(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis
) -> None:
    quiet = api_settings.model_copy(update={"control_loop": False})
    async with AsyncTestClient(create_app(quiet)) as client:
        template = await import_template(client, alice, origin)
        task = await create_task(client, alice, template["id"], params={"days": 1})
    # A replica read the event, then died before recording it.
    await redis.xgroup_create(EVENTS_STREAM, EVENTS_GROUP, id="0", mkstream=True)
    await send(redis, "started", task, worker="w1")
    taken = await redis.xreadgroup(EVENTS_GROUP, "dead-replica", {EVENTS_STREAM: ">"}, count=10)
    assert len(taken[0][1]) == 1
    async with AsyncTestClient(create_app(api_settings)) as client:
        await task_in(client, alice, task["id"], "running", worker="w1")
        await recorded(redis)
        assert await redis.xpending(EVENTS_STREAM, EVENTS_GROUP) == {
            "pending": 0,
            "min": None,
            "max": None,
            "consumers": [],
        }


async def test_cancelling_a_running_task_asks_its_worker_to_stop_it(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    await send(redis, "started", task)
    await task_in(client, alice, task["id"], "running")
    response = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.OPERATOR])
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    assert await redis.exists(cancel_key(task["id"])) == 1
    await send(redis, "finished", task, status="cancelled", error="cancelled on request")
    cancelled = await task_in(client, alice, task["id"], "cancelled", error="cancelled on request")
    assert cancelled["finished_at"] is not None


async def test_a_failed_attempt_is_retried_when_the_template_opts_in(
    client: Client, alice: Caller, origin: Path, redis: Redis, database_url: str
) -> None:
    template = await import_template(client, alice, origin)
    await sql(
        database_url, "UPDATE task_templates SET max_attempts = 2, retry_on = '{failed}' WHERE id = $1", template["id"]
    )
    task = await create_task(client, alice, template["id"], params={"days": 1})
    assert (task["max_attempts"], task["retry_on"]) == (2, ["failed"])
    await send(redis, "started", task, worker="w1")
    await write(redis, task, ("stdout", "a"), ("stdout", "b"))
    await send(redis, "finished", task, worker="w1", status="failed", exit_code=3, log_lines=2)

    second = await task_in(client, alice, task["id"], "queued", attempt=2)
    assert (second["exit_code"], second["error"], second["worker"], second["started_at"]) == (None, None, None, None)
    job = await queued_job(redis, task["id"], attempt=2)
    assert job is not None
    assert job.attempt == 2

    # The first attempt's stragglers are ignored.
    await send(redis, "finished", task, attempt=1, status="success", exit_code=0)
    await send(redis, "started", task, attempt=1, worker="late")
    await recorded(redis)
    assert (await show(client, alice, task["id"]))["status"] == "queued"

    await send(redis, "started", task, attempt=2, worker="w2")
    await write(redis, task, ("stderr", "c"), attempt=2)  # the new attempt numbers its lines from 1 again
    await write(redis, task, ("stdout", "late"), first=3)  # the first attempt's straggler: not the task's output
    await task_in(client, alice, task["id"], "running", attempt=2, worker="w2")
    expected = [(1, "stdout", "a"), (2, "stdout", "b"), (3, "stderr", "c")]
    assert lines_of(await logs(client, alice, task)) == expected
    assert lines_of(await logs(client, alice, task, "?after=2")) == expected[2:]
    assert [item["attempt"] for item in (await logs(client, alice, task))["items"]] == [1, 1, 2]

    await send(redis, "finished", task, attempt=2, worker="w2", status="failed", exit_code=4, log_lines=1)
    final = await task_in(client, alice, task["id"], "failed", attempt=2, exit_code=4)  # no attempts left
    assert final["log_lines"] == 3
    stored = await logs(client, alice, task)
    assert lines_of(stored) == expected
    assert [item["attempt"] for item in stored["items"]] == [1, 1, 2]
    assert await redis.exists(log_stream(task["id"], 2)) == 0


async def test_the_reaper_marks_tasks_of_dead_workers_lost_and_spares_live_ones(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis
) -> None:
    # The heartbeat timeout is 600 s (`api_settings`): the fresh worker never looks dead; the stale ones are 1 h old.
    # No grace: a task that looks lost in one pass is lost (the grace has a test of its own).
    async with AsyncTestClient(create_app(api_settings.model_copy(update={"lost_grace": 0}))) as client:
        template = await import_template(client, alice, origin)
        hour_ago, now = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
        names = ("stale", "fresh", "gone", "restarted", "forgot")
        tasks = {name: await create_task(client, alice, template["id"], params={"days": 1}) for name in names}
        beats = {
            "stale": (hour_ago, hour_ago - timedelta(hours=1)),
            "fresh": (now, hour_ago - timedelta(hours=1)),
            "restarted": (now, now),
            "forgot": (now, hour_ago - timedelta(hours=1)),
        }
        for name, (at, started_at) in beats.items():
            running = [tasks[name]["id"]] if name not in ("restarted", "forgot") else []
            beat = Heartbeat(
                id=f"w-{name}",
                host="h",
                pid=1,
                pools=["default"],
                running=running,
                cache_bytes=0,
                cache_entries=0,
                downloads=0,
                version="1",
                started_at=iso(started_at),
                at=iso(at),
            )
            await redis.hset(WORKERS_KEY, beat.id, beat.to_json())  # type: ignore[misc]
        for name in names:
            await send(redis, "started", tasks[name], worker=f"w-{name}", at=iso(hour_ago))

        stale = await task_in(client, alice, tasks["stale"]["id"], "lost")
        assert "w-stale" in stale["error"]
        assert hour_ago.isoformat(timespec="seconds") in stale["error"]
        assert (stale["exit_code"], stale["finished_at"] is not None) == (None, True)
        gone = await task_in(client, alice, tasks["gone"]["id"], "lost")
        assert "w-gone" in gone["error"]
        assert "no heartbeat" in gone["error"]
        restarted = await task_in(client, alice, tasks["restarted"]["id"], "lost")
        assert "w-restarted restarted" in restarted["error"]
        forgot = await task_in(client, alice, tasks["forgot"]["id"], "lost")
        assert "w-forgot is alive but no longer runs it" in forgot["error"]

        # A task that goes stale later is found by a later pass, which spared the fresh worker's task again.
        later = await create_task(client, alice, template["id"], params={"days": 1})
        await send(redis, "started", later, worker="w-stale", at=iso(hour_ago))
        await task_in(client, alice, later["id"], "lost")
        fresh = await show(client, alice, tasks["fresh"]["id"])
        assert (fresh["status"], fresh["worker"], fresh["error"]) == ("running", "w-fresh", None)


async def test_heartbeats_missing_after_redis_lost_its_data_do_not_make_running_tasks_lost(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis
) -> None:
    # Redis restarted empty: no heartbeat is on record until the workers beat again. The task's worker is alive.
    settings = api_settings.model_copy(update={"heartbeat_timeout": 1.0, "lost_grace": 60.0})
    async with AsyncTestClient(create_app(settings)) as client:
        template = await import_template(client, alice, origin)
        task = await create_task(client, alice, template["id"], params={"days": 1})
        await send(redis, "started", task, worker="w-alive", at=iso(datetime.now(UTC) - timedelta(hours=1)))
        await recorded(redis)
        await asyncio.sleep(1.5)  # several reaper passes (every 0.2 s), all within the grace
        assert (await show(client, alice, task["id"]))["status"] == "running"
        long_ago = iso(datetime.now(UTC) - timedelta(hours=2))
        beat = Heartbeat(
            id="w-alive",
            host="h",
            pid=1,
            pools=["default"],
            running=[task["id"]],
            cache_bytes=0,
            cache_entries=0,
            downloads=0,
            version="1",
            started_at=long_ago,
            at=iso(),
        )
        await redis.hset(WORKERS_KEY, beat.id, beat.to_json())  # type: ignore[misc]
        await send(redis, "finished", task, worker="w-alive", status="success", exit_code=0)
        await task_in(client, alice, task["id"], "success", exit_code=0)


async def follow(
    client: Client, caller: Caller, task: dict[str, Any], query: str = "", headers: dict[str, str] | None = None
) -> list[ServerEvent]:
    response = await client.get(
        f"/api/v1/tasks/{task['id']}/logs?follow=true{query}", headers={**caller[Role.VIEWER], **(headers or {})}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return list(parse_events(response.text.splitlines()))


async def test_following_a_log_streams_its_lines_then_how_the_task_ended(
    client: Client, alice: Caller, origin: Path, redis: Redis, redis_url: str
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    await send(redis, "started", task)
    await write(redis, task, ("stdout", "one"), ("stderr", "two"))
    await task_in(client, alice, task["id"], "running")

    def worker_goes_on() -> None:
        """The rest of the run, from another thread: the test client blocks this event loop while it streams."""
        with SyncRedis.from_url(redis_url) as worker_redis:
            for seq, text in ((3, "three"), (4, "four")):
                line = LogLine(seq, "stdout", text, 1)
                worker_redis.xadd(log_stream(task["id"], 1), line.to_fields())
            finished = Event(
                type="finished",
                task_id=task["id"],
                attempt=1,
                worker="w1",
                at=iso(),
                status="failed",
                exit_code=4,
                error="exit 4",
                log_lines=4,
            )
            worker_redis.xadd(EVENTS_STREAM, finished.to_fields())

    writer = threading.Thread(target=worker_goes_on)
    writer.start()  # now: a task of this loop would only start once the request is over
    try:
        events = await follow(client, alice, task)
    finally:
        writer.join(30)
    lines = [json.loads(event.data) for event in events if event.name == "message"]
    assert [(line["seq"], line["stream"], line["line"]) for line in lines] == [
        (1, "stdout", "one"),
        (2, "stderr", "two"),
        (3, "stdout", "three"),
        (4, "stdout", "four"),
    ]
    assert [event.id for event in events if event.name == "message"] == ["1", "2", "3", "4"]
    assert events[-1].name == "end"
    assert json.loads(events[-1].data) == {"status": "failed", "exit_code": 4, "error": "exit 4"}

    resumed = await follow(client, alice, task, headers={"Last-Event-ID": "2"})
    assert [event.id for event in resumed if event.name == "message"] == ["3", "4"]
    assert resumed[-1].name == "end"
    after = await follow(client, alice, task, query="&after=3")
    assert [json.loads(event.data)["line"] for event in after if event.name == "message"] == ["four"]
    bad = await client.get(
        f"/api/v1/tasks/{task['id']}/logs?follow=true", headers={**alice[Role.VIEWER], "Last-Event-ID": "x"}
    )
    assert bad.status_code == 422, bad.text
