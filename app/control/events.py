"""The event consumer: records what workers report (`worker.protocol.Event`) from the events stream, once.

Every server replica reads the stream in the consumer group `EVENTS_GROUP`, so each entry goes to one of them. An
entry is acknowledged (and deleted) only after it was recorded; one that could not be recorded (the database was
down: the pass ends there, and the loop says once that the database is away) is read again, in order, by the same
consumer on its next pass, and one left behind by a replica that died is taken over (XAUTOCLAIM) once it has been
idle for `claim_after` seconds. A malformed entry is logged and dropped: it never blocks the stream. Recording is
idempotent, so an entry handled twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import DateTime, func, literal, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.control.outages import service_of
from app.control.outcomes import Outcome, Outcomes
from app.db.models import Task, TaskStatus
from app.metrics import ApiMetrics
from app.services.host_runs import host_finished, host_started
from worker.protocol import EVENTS_GROUP, EVENTS_STREAM, Event, ProtocolError, parse_time

log = logging.getLogger("ahop.control")

BATCH = 100
MAX_HOST_NAME = 200
"""The longest host name the inventory holds (`hosts.name`)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
Moment = DateTime(timezone=True)
Entry = tuple[Any, Any]
"""A stream entry as redis-py returns it: (id, fields), fields None when the entry was deleted."""


def event_time(value: str) -> datetime:
    """A worker's ISO 8601 timestamp as an aware datetime; now when it cannot be read."""
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return datetime.now(UTC)


def parse(fields: Any) -> tuple[Event, uuid.UUID]:
    """The event of a stream entry and its task id; `ProtocolError` for anything this server cannot record."""
    if not isinstance(fields, dict):
        raise ProtocolError("the entry has no fields")
    event = Event.from_fields(fields)
    try:
        task_id = uuid.UUID(str(event.task_id))
    except ValueError:
        raise ProtocolError(f"task id {event.task_id!r} is not a UUID") from None
    if not isinstance(event.attempt, int) or isinstance(event.attempt, bool) or event.attempt < 1:
        raise ProtocolError(f"attempt {event.attempt!r} is not a positive integer")
    if not isinstance(event.worker, str) or not isinstance(event.at, str):
        raise ProtocolError("worker and at must be strings")
    if event.exit_code is not None and not isinstance(event.exit_code, int):
        raise ProtocolError(f"exit code {event.exit_code!r} is not an integer")
    if not isinstance(event.log_lines, int) or event.log_lines < 0:
        raise ProtocolError(f"log_lines {event.log_lines!r} is not a count")
    if event.digest is not None and not (isinstance(event.digest, str) and _HEX64.fullmatch(event.digest)):
        raise ProtocolError(f"digest {event.digest!r} is not 64 lowercase hex characters")
    if event.host is not None and not (isinstance(event.host, str) and len(event.host) <= MAX_HOST_NAME):
        raise ProtocolError(f"host {event.host!r} is not a host name of at most {MAX_HOST_NAME} characters")
    return event, task_id


class EventConsumer:
    """Records the events of the stream; with `metrics`, observes how long each task waited for its first start."""

    def __init__(
        self,
        redis: Redis,
        session_factory: async_sessionmaker[AsyncSession],
        outcomes: Outcomes,
        *,
        consumer: str,
        block: float,
        claim_after: float,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.session_factory = session_factory
        self.outcomes = outcomes
        self.consumer = consumer
        self.block_ms = max(1, round(block * 1000))
        self.claim_after_ms = max(1, round(claim_after * 1000))
        self.metrics = metrics
        self._group_ready = False

    async def run_once(self) -> int:
        """One pass: entries this consumer could not record before, entries of dead consumers, then new entries
        (waiting up to `block` seconds for them). How many entries were recorded or dropped."""
        await self._ensure_group()
        try:
            done = await self._handle_all(await self._read("0", block=False))
            claimed = await self.redis.xautoclaim(
                EVENTS_STREAM, EVENTS_GROUP, self.consumer, self.claim_after_ms, start_id="0-0", count=BATCH
            )
            done += await self._handle_all(claimed[1])
            return done + await self._handle_all(await self._read(">", block=True))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (a restart without persistence): make the group again
                self._group_ready = False
            raise

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, EVENTS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, start: str, *, block: bool) -> list[Entry]:
        answer = await self.redis.xreadgroup(
            EVENTS_GROUP, self.consumer, {EVENTS_STREAM: start}, count=BATCH, block=self.block_ms if block else None
        )
        return [entry for _, entries in answer or [] for entry in entries]

    async def _handle_all(self, entries: list[Entry]) -> int:
        done = 0
        for entry_id, fields in entries:
            try:
                await self.handle(entry_id, fields)
            except Exception as exc:  # left pending: read again on the next pass
                if service_of(exc) is not None:
                    raise  # every later entry would fail alike: the pass ends, the outage is logged once
                # A fault of this entry alone: later entries go on.
                log.warning("event %s not recorded yet, will retry: %s: %s", _text(entry_id), type(exc).__name__, exc)
                continue
            done += 1
        return done

    async def handle(self, entry_id: Any, fields: Any) -> None:
        """Record one entry (or drop it when malformed), then acknowledge and delete it."""
        try:
            event, task_id = parse(fields)
        except (ProtocolError, TypeError) as exc:
            log.error("dropped malformed event %s: %s", _text(entry_id), exc)
        else:
            if event.type == "started":
                await self._started(event, task_id)
            elif event.type in ("host_started", "host_finished"):
                await self._host(event, task_id)
            else:
                await self.outcomes.record(
                    task_id,
                    event.attempt,
                    Outcome(
                        status=str(event.status),
                        exit_code=event.exit_code,
                        error=event.error,
                        log_lines=event.log_lines,
                        log_truncated=bool(event.log_truncated),
                        worker=event.worker[:255],
                        at=event_time(event.at),
                    ),
                )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(EVENTS_STREAM, EVENTS_GROUP, entry_id)
            pipe.xdel(EVENTS_STREAM, entry_id)
            await pipe.execute()

    async def _started(self, event: Event, task_id: uuid.UUID) -> None:
        # The start is the worker's clock (the reaper judges a task's age by it); queued_at is the database's,
        # taken before the job reached Redis. A task never shows a start before its queue time: a worker whose
        # clock is behind moves the queue time back to the start, and a start recorded before the dispatcher
        # marked the task queued (it still says `pending`) gives the task its start as its queue time.
        started_at = event_time(event.at)
        queued_at = func.least(Task.queued_at, literal(started_at, Moment), type_=Moment)  # LEAST skips a NULL
        async with self.session_factory() as session, session.begin():
            recorded = await session.execute(
                update(Task)
                .where(
                    Task.id == task_id,
                    Task.attempt == event.attempt,
                    Task.status.in_([TaskStatus.PENDING.value, TaskStatus.QUEUED.value]),
                )
                .values(
                    status=TaskStatus.RUNNING.value,
                    worker_id=event.worker[:255],
                    queued_at=queued_at,
                    started_at=started_at,
                    updated_at=func.now(),
                )
                .returning(Task.created_at)
                .execution_options(synchronize_session=False)
            )
            created_at = recorded.scalar_one_or_none()
        # Only the first attempt, and only when this pass recorded the start: an entry handled twice counts once.
        if self.metrics is not None and created_at is not None and event.attempt == 1:
            self.metrics.dispatched((started_at - created_at).total_seconds())

    async def _host(self, event: Event, task_id: uuid.UUID) -> None:
        """A host's run of the attempt the event names started or ended (once: a repeated event changes nothing)."""
        host, at = str(event.host), event_time(event.at)
        async with self.session_factory() as session, session.begin():
            if event.type == "host_started":
                await host_started(session, task_id, event.attempt, host, at)
                return
            ended = await host_finished(
                session,
                task_id,
                event.attempt,
                host,
                status=str(event.status),
                exit_code=event.exit_code,
                error=event.error,
                digest=event.digest,
                at=at,
            )
        if ended and self.metrics is not None:
            self.metrics.host_runs_ended(str(event.status))

    async def leave(self) -> None:
        """Remove this consumer from the group when it holds no unrecorded entries (a clean stop)."""
        try:
            consumers = await self.redis.xinfo_consumers(EVENTS_STREAM, EVENTS_GROUP)
        except ResponseError:  # no stream or no group (Redis lost its data): nothing to leave
            return
        for consumer in consumers:
            if _text(consumer.get("name", b"")) == self.consumer and not consumer.get("pending"):
                await self.redis.xgroup_delconsumer(EVENTS_STREAM, EVENTS_GROUP, self.consumer)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
