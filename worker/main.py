"""Builds and runs the arq worker of one pool from `WorkerSettings`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from storage.blobstore import BlobStore
from worker import jobs
from worker.protocol import PING_JOB, deserialize, queue_name, serialize
from worker.settings import WorkerSettings

log = logging.getLogger("ahop.worker")


def build_worker(settings: WorkerSettings) -> Worker:
    """An arq worker for `settings.worker_pool`, talking JSON, checking S3 before it takes any job."""
    blobs = BlobStore(settings.s3_location())

    async def on_startup(ctx: dict[str, Any]) -> None:
        # Fail at start, not at the first job, when the blob store is out of reach.
        await asyncio.to_thread(blobs.check_bucket)
        ctx["blobs"] = blobs
        ctx["pool"] = settings.worker_pool
        log.info("worker ready: pool=%s queue=%s", settings.worker_pool, queue_name(settings.worker_pool))

    return Worker(
        functions=[func(jobs.ping, name=PING_JOB, max_tries=1)],
        queue_name=queue_name(settings.worker_pool),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=on_startup,
        max_jobs=settings.worker_max_jobs,
        poll_delay=settings.worker_poll_delay,
        job_serializer=serialize,
        job_deserializer=deserialize,
        handle_signals=True,
        allow_abort_jobs=True,
    )


def run_worker(settings: WorkerSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    build_worker(settings).run()
