"""The workers as the server sees them through Redis: heartbeats, what their stores hold, and prefetch requests.

Workers are shared infrastructure: they belong to pools, not to tenants. A worker counts as live while its latest
heartbeat is at most `heartbeat_timeout` seconds old (measured against the server's clock, so the clocks of server
and workers should agree within a second or two). A worker that stopped without leaving (a crash, a lost host)
stays in the list as dead until `forget_after` seconds have passed since its last heartbeat; the next read of the
list then removes it, with its digests and its inbox.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import Unavailable
from storage.digest import Digest
from worker.protocol import (
    WORKERS_KEY,
    BlobRef,
    Heartbeat,
    ProtocolError,
    parse_time,
    worker_digests_key,
    worker_inbox_key,
)

log = logging.getLogger("ahop.workers")

INBOX_LIMIT = 100
"""Most messages kept in one worker's inbox: a stuck worker cannot make it grow without bound."""

# Remove a worker only if its heartbeat is still the stale one we read: a worker that came back keeps its entry.
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class WorkerState:
    """A worker's latest heartbeat and how old it is."""

    heartbeat: Heartbeat
    last_seen: datetime
    started_at: datetime
    age_seconds: float
    live: bool


class Workers:
    """Reads the workers' heartbeats and digests; asks workers to prefetch blobs."""

    def __init__(
        self, redis: Redis, *, heartbeat_timeout: float, forget_after: float, prefetch_on_import: bool = False
    ) -> None:
        self.redis = redis
        self.heartbeat_timeout = heartbeat_timeout
        self.forget_after = forget_after
        self.prefetch_on_import = prefetch_on_import

    async def known(self) -> list[WorkerState]:
        """Every known worker, live or dead, sorted by id. Forgets workers dead for longer than `forget_after`."""
        try:
            entries = await self.redis.hgetall(WORKERS_KEY)  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unavailable, the workers cannot be listed: {exc}") from exc
        now = datetime.now(UTC)
        states: list[WorkerState] = []
        for raw_id, raw in entries.items():
            worker_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                heartbeat = Heartbeat.from_json(raw)
                last_seen, started_at = parse_time(heartbeat.at), parse_time(heartbeat.started_at)
            except (ProtocolError, ValueError, TypeError) as exc:
                log.warning("ignored the malformed heartbeat of worker %r: %s", worker_id, exc)
                continue
            age = max(0.0, (now - last_seen).total_seconds())  # a worker's clock ahead of ours is not "the future"
            if age > self.forget_after:
                await self._forget(worker_id, raw)
                continue
            states.append(WorkerState(heartbeat, last_seen, started_at, age, live=age <= self.heartbeat_timeout))
        return sorted(states, key=lambda state: state.heartbeat.id)

    async def _forget(self, worker_id: str, raw: bytes | str) -> None:
        seen = raw.decode() if isinstance(raw, bytes) else raw  # JSON, so UTF-8: encodes back to the same bytes
        keys = [WORKERS_KEY, worker_digests_key(worker_id), worker_inbox_key(worker_id)]
        try:
            if await self.redis.eval(_FORGET, len(keys), *keys, worker_id, seen):  # type: ignore[misc]
                log.info("forgot worker %s: no heartbeat for more than %s s", worker_id, self.forget_after)
        except (RedisError, OSError) as exc:
            log.warning("could not forget worker %s: %s", worker_id, exc)

    async def live(self, pool: str) -> list[WorkerState]:
        """The live workers that take jobs of `pool`."""
        return [state for state in await self.known() if state.live and pool in state.heartbeat.pools]

    async def pool_warnings(self, pool: str) -> list[str]:
        """What an operator should hear before waiting on a task of `pool`: that no live worker serves it, or that
        Redis could not be read to tell. Empty when a live worker serves the pool. Never raises: the task is
        recorded and queued whatever this finds, so that a worker started later still runs it."""
        try:
            serving = await self.live(pool)
        except Unavailable as exc:
            return [f"whether a live worker serves pool {pool} is unknown: {exc}"]
        if serving:
            return []
        return [f"no live worker serves pool {pool}; the task waits in its queue until a worker of the pool starts"]

    async def holders(self, pool: str, digest: Digest) -> list[WorkerState]:
        """The live workers of `pool` whose stores hold `digest`."""
        candidates = await self.live(pool)
        if not candidates:
            return []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for state in candidates:
                    pipe.sismember(worker_digests_key(state.heartbeat.id), digest.hex)
                held = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unavailable, the holders of a digest cannot be read: {exc}") from exc
        return [state for state, has in zip(candidates, held, strict=True) if has]

    async def prefetch(self, pool: str, blob: BlobRef) -> list[str]:
        """Ask every live worker of `pool` to fetch `blob` into its store; the ids of the workers asked."""
        targets = [state.heartbeat.id for state in await self.live(pool)]
        if not targets:
            return []
        message = json.dumps(blob.to_wire(), separators=(",", ":"))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_id in targets:
                    pipe.rpush(worker_inbox_key(worker_id), message)
                    pipe.ltrim(worker_inbox_key(worker_id), -INBOX_LIMIT, -1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unavailable, no worker was asked to prefetch: {exc}") from exc
        return targets

    async def announce(self, pool: str, blob: BlobRef) -> list[str]:
        """After an import or a sync that changed content: prefetch when `prefetch_on_import` is on.

        Best effort: the content is stored whatever happens here, so a Redis failure is logged, never raised.
        """
        if not self.prefetch_on_import:
            return []
        try:
            asked = await self.prefetch(pool, blob)
        except Unavailable as exc:
            log.warning("prefetch of %s after import skipped: %s", blob.digest, exc)
            return []
        log.info("asked %d worker(s) of pool %s to prefetch %s", len(asked), pool, blob.digest)
        return asked
