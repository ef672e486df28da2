"""What a worker tells the server: events of an attempt and the lines its script writes, through Redis streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.protocol import EVENTS_STREAM, Event, EventType, FinalStatus, HostFinalStatus, LogLine

log = logging.getLogger("ahop.worker")

LOG_RETENTION_SECONDS = 7 * 24 * 3600
"""A log stream the server never collected (it was down for a week) expires instead of staying forever."""
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
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
    status: FinalStatus | HostFinalStatus | None = None,
    exit_code: int | None = None,
    error: str | None = None,
    log_lines: int = 0,
    log_truncated: bool = False,
    host: str | None = None,
    digest: str | None = None,
) -> None:
    """Append one event of an attempt to the events stream; the server records it once, however often sent.
    `host` and `digest` belong to the events of one target host's run (`host_started`, `host_finished`)."""
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
        host=host,
        digest=digest,
    )
    await _until_delivered(lambda: redis.xadd(EVENTS_STREAM, event.to_fields()), f"{kind} event of task {task_id}")  # type: ignore[arg-type]


async def _until_delivered(send: Callable[[], Awaitable[object]], what: str) -> None:
    """Send until Redis takes it: an outcome the server never hears of would leave its task running for ever."""
    delay = RETRY_FIRST
    while True:
        try:
            await send()
            return
        except (RedisError, OSError) as exc:
            log.warning("%s not delivered, retrying in %.1f s: %s", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class LogWriter:
    """Numbers an attempt's output lines from 1, tags them with the attempt and appends them in batches to the
    attempt's log stream `key` (`TaskJob.log_key`).

    The stream keeps the newest `limit` lines (exact trim); `written` counts every line, so the log is truncated
    when `written > limit`.
    """

    def __init__(self, redis: Redis, key: str, attempt: int, limit: int) -> None:
        self._redis = redis
        self._key = key
        self._attempt = attempt
        self._limit = max(1, limit)
        self._pending: list[LogLine] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one batch at a time keeps the stream in sequence order
        self.written = 0

    @property
    def truncated(self) -> bool:
        return self.written > self._limit

    async def write(self, stream: str, line: str, host: str = "") -> None:
        """Add one line of `stream` (printed by the run on target `host`, "" for the worker's own); a full batch is
        appended before this returns, so a script that writes fast waits for Redis rather than filling memory."""
        self._queue(stream, line, host)
        if len(self._pending) >= FLUSH_LINES:
            await self.flush()
        else:
            self._flush_later()

    def add(self, stream: str, line: str, host: str = "") -> None:
        """Add one line without waiting, for callers that cannot await (a remote run's line handler): it is
        appended within `FLUSH_INTERVAL`."""
        self._queue(stream, line, host)
        self._flush_later()

    def _queue(self, stream: str, line: str, host: str) -> None:
        self.written += 1
        entry = LogLine(seq=self.written, stream=stream, line=line, attempt=self._attempt, host=host)  # type: ignore[arg-type]
        self._pending.append(entry)

    def _flush_later(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        await asyncio.shield(self.flush())  # cancelling the timer must never drop a batch half-written

    async def flush(self) -> None:
        """Append the pending lines. When Redis does not answer they stay pending (the newest `limit` of them) for
        the next flush, so a short outage loses no output and never stops the script."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            try:
                await self._append(batch)
            except (RedisError, OSError) as exc:
                self._pending = (batch + self._pending)[-self._limit :]
                log.warning("output of %s not delivered yet (%d lines wait): %s", self._key, len(self._pending), exc)

    async def _append(self, batch: list[LogLine]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in batch:
                pipe.xadd(self._key, entry.to_fields(), maxlen=self._limit, approximate=False)  # type: ignore[arg-type]
            pipe.expire(self._key, LOG_RETENTION_SECONDS)
            await pipe.execute()

    async def close(self) -> None:
        """Write what is left, waiting for Redis as long as it takes; then the stream holds the whole (capped)
        output, before the `finished` event is sent."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        async with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            await _until_delivered(lambda: self._append(batch), f"output of {self._key}")
