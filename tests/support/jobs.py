"""Jobs as the server hands them to workers: a template published as a blob, a job of it, enqueued; and what the
worker sends back on its streams."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from storage.blobstore import BlobInfo
from tests.support import waiting
from worker.protocol import EVENTS_STREAM, RUN_JOB, BlobRef, Event, LogLine, TaskJob, job_id, log_stream, queue_name

Publish = Callable[[Path], BlobRef]


def blob_figures(info: BlobInfo) -> dict[str, Any]:
    """A stored blob's figures, under the names both a job's `BlobRef` and the blob's row give them."""
    return {
        "digest": info.digest,
        "tar_size": info.tar_size,
        "zst_size": info.zst_size,
        "zst_sha256": info.zst_sha256,
        "files": info.files,
    }


def a_job(blob: BlobRef, **fields: Any) -> TaskJob:
    """A first attempt of a shell task of the blob's `run.sh`, with `fields` changed."""
    values: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "attempt": 1,
        "tenant_id": str(uuid.uuid4()),
        "template_code": "hello",
        "blob": blob,
        "entry_file": "run.sh",
        "script_type": "shell",
        "params": {"who": "ops"},
        **fields,
    }
    return TaskJob(**values)


async def enqueue(queue: ArqRedis, job: TaskJob, wire: dict[str, Any] | None = None, *, suffix: str = "") -> None:
    """Put the job on the default pool's queue as the server does (`wire` instead of its own, if given)."""
    queued = await queue.enqueue_job(
        RUN_JOB,
        wire or job.to_wire(),
        _job_id=job_id(job.task_id, job.attempt) + suffix,
        _queue_name=queue_name("default"),
    )
    assert queued is not None


async def events_of(redis: Redis, task_id: str, *, until: str = "finished", bound: float = 60) -> list[Event]:
    """The task's events, once one of type `until` is among them."""

    async def arrived() -> list[Event] | None:
        events = [Event.from_fields(fields) for _, fields in await redis.xrange(EVENTS_STREAM)]
        mine = [event for event in events if event.task_id == task_id]
        return mine if any(event.type == until for event in mine) else None

    result: list[Event] = await waiting.until(arrived, f"a {until} event of task {task_id}", bound)
    return result


def script_blob(tmp_path: Path, publish: Publish, name: str, script: str) -> BlobRef:
    """Publish a template holding one `run.sh` (unique content: the bucket lives for the whole session)."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "run.sh").write_text(f"# {secrets.token_hex(8)}\n{script}")
    return publish(directory)


async def log_of(redis: Redis, task_id: str, attempt: int = 1) -> list[LogLine]:
    """The output lines the attempt has streamed so far."""
    return [LogLine.from_fields(fields) for _, fields in await redis.xrange(log_stream(task_id, attempt))]
