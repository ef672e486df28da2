"""Builds and runs the arq worker of one pool from `WorkerSettings`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func
from redis.exceptions import RedisError

from storage.blobstore import BlobStore
from worker import jobs
from worker.attempts import Attempts
from worker.hardening import make_non_dumpable, root_without_run_as_warning
from worker.metrics import MetricsServer, WorkerMetrics, serve
from worker.outage import OutlastingWorker, RedisOutage
from worker.presence import Presence
from worker.protocol import PING_JOB, RUN_JOB, deserialize, queue_name, serialize
from worker.settings import WorkerSettings
from worker.store import LocalStore

log = logging.getLogger("ahop.worker")

MAX_TASK_SECONDS = 7 * 24 * 3600
"""arq's own limit for one attempt; the task's timeout, enforced by the runner, is always shorter."""


def build_worker(settings: WorkerSettings) -> OutlastingWorker:
    """An arq worker for `settings.worker_pool`, talking JSON, checking S3 before it takes any job, riding out
    Redis outages (`worker.outage`)."""
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    # Where, never who: the URL's password stays out of the log.
    outage = RedisOutage(f"{redis_settings.host}:{redis_settings.port}/{redis_settings.database}")
    blobs = BlobStore(settings.s3_location())
    worker_id = settings.resolved_worker_id()
    background: list[asyncio.Task[None]] = []
    metrics = WorkerMetrics()
    served: list[MetricsServer] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        make_non_dumpable()  # scripts of the same user cannot read our environment through /proc
        if warning := root_without_run_as_warning(settings.worker_run_as):
            log.warning(warning)
        # Fail at start, not at the first job, when the blob store is out of reach.
        await asyncio.to_thread(blobs.check_bucket)
        store = LocalStore(settings.worker_root, blobs, max_bytes=settings.worker_cache_max_bytes, metrics=metrics)
        attempts = Attempts(settings, ctx["redis"], store, worker_id)
        metrics.watch_store(store.stats)
        metrics.watch_running(attempts.running_count)
        if server := serve(metrics, settings.worker_metrics_host, settings.worker_metrics_port):
            served.append(server)
        presence = Presence(
            ctx["redis"],
            store,
            worker_id,
            [settings.worker_pool],
            attempts.running,
            settings.worker_heartbeat_interval,
            outage=outage,
        )
        await presence.beat()
        background.extend([asyncio.create_task(presence.heartbeats()), asyncio.create_task(presence.inbox())])
        ctx.update(blobs=blobs, pool=settings.worker_pool, attempts=attempts, presence=presence)
        log.info("worker %s ready: pool=%s queue=%s", worker_id, settings.worker_pool, queue_name(settings.worker_pool))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if presence := ctx.get("presence"):
            try:
                await presence.leave()
            except (RedisError, OSError) as exc:  # the server sees the heartbeat stop, as for a worker that died
                log.warning("stopping without removing this worker's heartbeat: Redis is away (%s)", exc)
        for server in served:
            await asyncio.to_thread(server.stop)

    return OutlastingWorker(
        outage=outage,
        functions=[
            func(jobs.ping, name=PING_JOB, max_tries=1),
            func(jobs.run_task, name=RUN_JOB, max_tries=1, timeout=MAX_TASK_SECONDS),
        ],
        queue_name=queue_name(settings.worker_pool),
        redis_settings=redis_settings,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=settings.worker_max_jobs,
        poll_delay=settings.worker_poll_delay,
        job_serializer=serialize,
        job_deserializer=deserialize,
        handle_signals=True,
        job_completion_wait=round(settings.worker_shutdown_grace),
        allow_abort_jobs=True,
        # A job's result holds its arguments (password values among them): keep it only briefly. Once it is gone,
        # a second delivery of the attempt still finds the attempt's claim and does not run it.
        keep_result=600,
    )


def run_worker(settings: WorkerSettings) -> None:
    """Run until SIGINT/SIGTERM, through any Redis outage."""
    build_worker(settings).run()
