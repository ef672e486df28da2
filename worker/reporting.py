"""What a worker tells the server: events of an attempt and the lines its script writes, through Redis streams."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from redis.asyncio import Redis

from worker.protocol import EVENTS_STREAM, Event, EventType, FinalStatus, LogLine, log_stream

LOG_RETENTION_SECONDS = 7 * 24 * 3600
"""A log stream the server never collected (it was down for a week) expires instead of staying forever."""
FLUSH_LINES = 200
FLUSH_INTERVAL = 0.05


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def report(
    redis: Redis,
    task_id: str,
    attempt: int,
    worker_id: str,
    kind: EventType,
    *,
    status: FinalStatus | None = None,
    exit_code: int | None = None,
    error: str | None = None,
    log_lines: int = 0,
    log_truncated: bool = False,
) -> None:
    """Append one event of an attempt to the events stream; the server records it once, however often sent."""
    event = Event(
        type=kind,
        task_id=task_id,
        attempt=attempt,
        worker=worker_id,
        at=now_iso(),
        status=status,
        exit_code=exit_code,
        error=error,
        log_lines=log_lines,
        log_truncated=log_truncated,
    )
    await redis.xadd(EVENTS_STREAM, event.to_fields())  # type: ignore[arg-type]


class LogWriter:
    """Numbers a task's output lines from 1 and appends them to its log stream in batches.

    The stream keeps the newest `limit` lines (exact trim); `written` counts every line, so the log is truncated
    when `written > limit`.
    """

    def __init__(self, redis: Redis, task_id: str, limit: int) -> None:
        self._redis = redis
        self._key = log_stream(task_id)
        self._limit = max(1, limit)
        self._pending: list[LogLine] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one batch at a time keeps the stream in sequence order
        self.written = 0

    @property
    def truncated(self) -> bool:
        return self.written > self._limit

    async def write(self, stream: str, line: str) -> None:
        self.written += 1
        self._pending.append(LogLine(seq=self.written, stream=stream, line=line))  # type: ignore[arg-type]
        if len(self._pending) >= FLUSH_LINES:
            await self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        await asyncio.shield(self.flush())  # cancelling the timer must never drop a batch half-written

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in batch:
                    pipe.xadd(self._key, entry.to_fields(), maxlen=self._limit, approximate=False)  # type: ignore[arg-type]
                pipe.expire(self._key, LOG_RETENTION_SECONDS)
                await pipe.execute()

    async def close(self) -> None:
        """Write what is left; after this the stream holds the whole (capped) output."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.flush()
