"""Workers as the API sees them, without a worker process: the heartbeat and digests one publishes to Redis, and
the events and output lines it writes, through `worker.protocol`'s encoders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from tests.support.waiting import until
from worker.protocol import (
    EVENTS_STREAM,
    WORKERS_KEY,
    Event,
    Heartbeat,
    HostFinalStatus,
    LogLine,
    log_stream,
    worker_digests_key,
)


async def beat(
    redis: Redis,
    worker_id: str,
    *,
    age: float = 0.0,
    pools: tuple[str, ...] = ("default",),
    running: tuple[str, ...] = (),
    digests: tuple[str, ...] = (),
) -> None:
    """Publish what a worker publishes: its heartbeat (as of `age` seconds ago) and the digests it holds."""
    at = datetime.now(UTC) - timedelta(seconds=age)
    heartbeat = Heartbeat(
        id=worker_id,
        host=f"{worker_id}.example",
        pid=4242,
        pools=list(pools),
        running=list(running),
        cache_bytes=1 << 20,
        cache_entries=len(digests),
        downloads=3,
        version="1.2.3",
        started_at=(at - timedelta(hours=1)).isoformat(),
        at=at.isoformat(),
    )
    await redis.hset(WORKERS_KEY, worker_id, heartbeat.to_json())  # type: ignore[misc]
    if digests:
        await redis.sadd(worker_digests_key(worker_id), *digests)  # type: ignore[misc]


def iso(moment: datetime | None = None) -> str:
    """A protocol timestamp of `moment` (default now)."""
    return (moment or datetime.now(UTC)).isoformat()


async def send(
    redis: Redis,
    kind: str,
    task: dict[str, Any],
    attempt: int = 1,
    worker: str = "w1",
    at: str | None = None,
    status: HostFinalStatus | None = None,
    **outcome: Any,
) -> None:
    """Append an event of the task's attempt to the events stream as its worker does."""
    event = Event(
        type=kind,  # type: ignore[arg-type]
        task_id=task["id"],
        attempt=attempt,
        worker=worker,
        at=at or iso(),
        status=status,
        **outcome,
    )
    await redis.xadd(EVENTS_STREAM, event.to_fields())  # type: ignore[arg-type]


async def write(
    redis: Redis, task: dict[str, Any], *lines: tuple[str, str], first: int = 1, attempt: int = 1, host: str = ""
) -> None:
    """Append lines to an attempt's log stream as its worker does (as printed by target `host`'s run, if given)."""
    for seq, (stream, text) in enumerate(lines, start=first):
        line = LogLine(seq, stream, text, attempt, host)  # type: ignore[arg-type]
        await redis.xadd(log_stream(task["id"], attempt), line.to_fields())  # type: ignore[arg-type]


async def recorded(redis: Redis) -> None:
    """Wait until the consumer has recorded every event sent so far (it deletes each one it has recorded)."""

    async def drained() -> bool:
        return int(await redis.xlen(EVENTS_STREAM)) == 0

    await until(drained, "the events to be recorded")
