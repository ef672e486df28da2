"""One attempt of a task on this worker: claim it, fetch its template by digest, run the script, report.

Order, and why:
1. decode the job — a protocol version this worker does not know is refused with a `finished` event that says so;
2. claim the attempt (SET NX): a job delivered twice runs once;
3. a cancel requested before the start means the script never runs;
4. `started` is reported before the fetch, so the server knows which worker holds the attempt from then on;
5. the store entry is held in use while the run copy is made, so eviction cannot remove it underneath;
6. a blob that fails verification, or cannot be fetched, fails the attempt before any script runs;
7. a `targets` job runs on its hosts (`worker.on_targets`): its hosts' events come between `started` and `finished`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.errors import StorageError
from worker.ansible_targets import run_playbook_on_targets
from worker.job_secrets import JobSecrets, SealError
from worker.on_targets import TargetsRun, TargetsSettings
from worker.protocol import EventType, ProtocolError, TaskJob, cancel_key, claim_key
from worker.reporting import LogWriter, report
from worker.runner import RunOutcome, RunRequest, run_script
from worker.settings import WorkerSettings
from worker.store import LocalStore

log = logging.getLogger("ahop.worker")

CLAIM_SECONDS = 7 * 24 * 3600
T = TypeVar("T")


@contextlib.asynccontextmanager
async def entered_in_thread(manager: AbstractContextManager[T]) -> AsyncIterator[T]:
    """Enter and leave a blocking context manager in worker threads, keeping the event loop free."""
    value = await asyncio.to_thread(manager.__enter__)
    try:
        yield value
    except BaseException as exc:
        if not await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(manager.__exit__, None, None, None)


@dataclass(eq=False)
class Attempts:
    """Runs attempts for one worker process and knows which tasks it is running now."""

    settings: WorkerSettings
    redis: Redis
    store: LocalStore
    worker_id: str
    _running: set[str] = field(default_factory=set, init=False, repr=False)

    def running(self) -> list[str]:
        return sorted(self._running)

    def running_count(self) -> int:
        """How many tasks run now; safe to call from another thread (the metrics server's), unlike `running`."""
        return len(self._running)

    async def run(self, wire: dict[str, Any]) -> dict[str, Any]:
        """Run the attempt that `wire` describes; the answer is for arq's job result, the events are for the server."""
        try:
            job = TaskJob.from_wire(wire)
        except (ProtocolError, TypeError) as exc:
            return await self._refuse(wire, exc)
        if not await self.redis.set(claim_key(job.task_id, job.attempt), self.worker_id, nx=True, ex=CLAIM_SECONDS):
            log.info("task %s attempt %d was already claimed; not running it again", job.task_id, job.attempt)
            return {"task_id": job.task_id, "status": "duplicate"}
        if await self._cancel_check(job)():
            await self._report(job.task_id, job.attempt, "finished", status="cancelled", error="cancelled before start")
            return {"task_id": job.task_id, "status": "cancelled"}
        self._running.add(job.task_id)
        try:
            await self._report(job.task_id, job.attempt, "started")
            return await self._fetch_and_run(job)
        finally:
            self._running.discard(job.task_id)

    async def _fetch_and_run(self, job: TaskJob) -> dict[str, Any]:
        logs = LogWriter(self.redis, job.log_key(), job.attempt, job.log_limit)
        try:
            secrets = self._open_secrets(job)
            async with entered_in_thread(self.store.use(job.blob)) as entry:
                await asyncio.to_thread(self.store.link_template, job.tenant_id, job.template_code, job.blob.digest)
                if job.execution == "targets":
                    outcome = await self._on_targets(job, entry, secrets, logs)
                else:
                    outcome = await run_script(self._request(job, entry, secrets), logs.write, self._cancel_check(job))
        except SealError as exc:
            outcome = RunOutcome(status="failed", exit_code=None, error=f"the script did not run: {exc}")
        except StorageError as exc:
            outcome = RunOutcome(
                status="failed",
                exit_code=None,
                error=f"template {job.blob.digest} could not be used, so the script did not run: {exc}",
            )
        except Exception as exc:  # whatever went wrong here, the server must hear how the attempt ended
            log.exception("task %s attempt %d failed in the worker", job.task_id, job.attempt)
            outcome = RunOutcome(status="failed", exit_code=None, error=f"the worker could not run the task: {exc}")
        except asyncio.CancelledError:
            # The worker is stopping past its grace period: the runner has killed the script's process group.
            # The stop waits for Redis to hear of it no longer than it waited for the script: with Redis away, the
            # server marks the task lost once this worker's heartbeats stop, as for a worker that died.
            try:
                await asyncio.wait_for(self._report_killed(job, logs), self.settings.worker_shutdown_grace)
            except TimeoutError:
                log.warning(
                    "stopping without reporting how task %s attempt %d ended: Redis is away", job.task_id, job.attempt
                )
            raise
        await logs.close()
        await self._report(
            job.task_id,
            job.attempt,
            "finished",
            status=outcome.status,
            exit_code=outcome.exit_code,
            error=outcome.error,
            log_lines=logs.written,
            log_truncated=logs.truncated,
        )
        return {"task_id": job.task_id, "status": outcome.status, "exit_code": outcome.exit_code}

    async def _on_targets(self, job: TaskJob, entry: Path, secrets: JobSecrets, logs: LogWriter) -> RunOutcome:
        """Run a `targets` job on its hosts (`worker.on_targets`); the outcome's exit code is always None."""
        if job.script_type == "ansible":
            return await self._playbook_on_targets(job, entry, secrets, logs)
        tar = await asyncio.to_thread(self.store.canonical_tar, job.blob.digest)
        cancelled = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(job, cancelled))
        try:
            run = TargetsRun(
                job,
                secrets,
                entry,
                tar,
                logs=logs,
                report=functools.partial(self._report, job.task_id, job.attempt),
                cancelled=cancelled,
                metrics=self.store.metrics,
                settings=TargetsSettings(
                    connect_timeout=self.settings.worker_connect_timeout,
                    kill_grace=self.settings.worker_kill_grace,
                    shutdown_grace=self.settings.worker_shutdown_grace,
                ),
            )
            ended = await run.run()
        finally:
            watcher.cancel()
        return RunOutcome(ended.status, None, ended.error)

    async def _playbook_on_targets(self, job: TaskJob, entry: Path, secrets: JobSecrets, logs: LogWriter) -> RunOutcome:
        """Run an Ansible `targets` job: one ansible-playbook on the worker over an inventory of its hosts."""
        assert job.targets is not None

        async def report_host(*, type: EventType, **fields: Any) -> None:
            if type == "host_finished":
                self.store.metrics.host_runs.labels(status=fields["status"]).inc()
            await self._report(job.task_id, job.attempt, type, **fields)

        return await run_playbook_on_targets(
            self._request(job, entry, secrets),
            job.targets,
            secrets,
            logs.write,
            self._cancel_check(job),
            report_host,
        )

    async def _watch_cancel(self, job: TaskJob, cancelled: asyncio.Event) -> None:
        """Set `cancelled` once a cancel of the task is requested, polling every `worker_cancel_poll` seconds."""
        check = self._cancel_check(job)
        while True:
            if await check():
                cancelled.set()
                return
            await asyncio.sleep(self.settings.worker_cancel_poll)

    async def _report_killed(self, job: TaskJob, logs: LogWriter) -> None:
        await logs.close()
        stopped = "the runs on its hosts were stopped" if job.execution == "targets" else "the script was killed"
        await self._report(
            job.task_id,
            job.attempt,
            "finished",
            status="failed",
            error=f"the worker stopped before the task finished; {stopped}",
            log_lines=logs.written,
            log_truncated=logs.truncated,
        )

    async def _report(self, task_id: str, attempt: int, kind: EventType, /, **outcome: Any) -> None:
        await report(self.redis, task_id, attempt, self.worker_id, kind, **outcome)

    def _open_secrets(self, job: TaskJob) -> JobSecrets:
        """The job's sealed secrets, opened; `SealError` when this worker cannot (no keys, another key, expired)."""
        return self.settings.worker_seal().open(job.sealed) if job.sealed is not None else JobSecrets()

    def _request(self, job: TaskJob, entry: Path, secrets: JobSecrets) -> RunRequest:
        params = secrets.unmasked(job.params)
        return RunRequest(
            task_id=f"{job.task_id}-{job.attempt}",  # names the run directory: one per attempt, never shared
            source=entry,
            runs_dir=self.settings.worker_root / "runs",
            entry_file=job.entry_file,
            script_type=job.script_type,
            params=params,
            secret_params=list(job.secret_params),
            timeout=job.timeout,
            kill_grace=self.settings.worker_kill_grace,
            cancel_poll=self.settings.worker_cancel_poll,
            run_as=self.settings.worker_run_as,
            search_path=self.settings.worker_script_path,
            extra_env={"AHOP_TASK_ID": job.task_id, "AHOP_TASK_ATTEMPT": str(job.attempt)},
        )

    def _cancel_check(self, job: TaskJob) -> Callable[[], Awaitable[bool]]:
        key = cancel_key(job.task_id)

        async def cancelled() -> bool:
            try:
                return bool(await self.redis.exists(key))
            except (RedisError, OSError):
                return False  # Redis away: keep running; the cancel is seen when it returns

        return cancelled

    async def _refuse(self, wire: dict[str, Any], problem: Exception) -> dict[str, Any]:
        """A job this worker cannot read: say so on the events stream when it names its task, so nothing hangs."""
        log.error("refused a job: %s", problem)
        task_id, attempt = wire.get("task_id"), wire.get("attempt")
        if isinstance(task_id, str) and isinstance(attempt, int):
            await self._report(task_id, attempt, "finished", status="failed", error=f"job refused: {problem}")
        return {"status": "refused", "error": str(problem)}
