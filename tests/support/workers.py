"""Workers as the API sees them, without a worker process: the heartbeat and digests one publishes to Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from worker.protocol import WORKERS_KEY, Heartbeat, worker_digests_key


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
