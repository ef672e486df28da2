"""One attempt of a `targets` job of a shell or python template: the template run on each host of its plan over SSH.

Per host, at most `forks` hosts at once (docs/design.md §10, §11, §13):
1. `host_started`, then a login with the host's pinned keys only (`targets.connect`), within the connect timeout;
2. the template's canonical tar into the host's cache (`targets.host_cache.ensure_content`): one command when the
   host holds it intact, else sent and checked there with the host's own `sha256sum`;
3. a private copy of it on the host, where the entry runs (`targets.remote_run.run_remote`) with the parameters as
   the worker's own runs get them: `--name value` arguments, `AHOP_PARAM_*` variables and a JSON file (mode 0600)
   named by `AHOP_PARAMS_FILE`, except that password parameters are left out of the arguments (any user of a host
   may read any process's argv there); its lines carry the host's name, password values and the login's secrets
   masked;
4. the copy removed, then `host_finished` with the host's status, exit code, error and the digest it ran.

An unreachable host holds up nobody: each host's login has its own bound, and hosts run side by side. The task's
timeout is one deadline for all its hosts: a run still going then is stopped (`timeout`), a host not started by
then is not started (`timeout`). Once more hosts failed than `max_fail_percentage` allows, hosts not started yet
are not started (`cancelled`). A cancel of the task stops every run and starts no other. `verdict` says how the task
ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from asyncssh import SSHClientConnection

from targets.connect import Login, Target, connect
from targets.errors import HostKeyMismatch, LoginRefused, TargetError, Unreachable
from targets.host_cache import Delivery, ensure_content, private_copy, remove_run
from targets.remote_run import RemoteCommand, run_remote
from worker.job_secrets import JobSecrets, LoginSecret
from worker.metrics import WorkerMetrics
from worker.output import MASK, secret_pattern
from worker.protocol import EventType, FinalStatus, HostFinalStatus, JobHost, TargetPlan, TaskJob
from worker.reporting import LogWriter
from worker.rundir import NotRunnable
from worker.runner import INTERPRETERS, entry_argument, param_environment, param_texts, script_arguments

log = logging.getLogger("ahop.worker")

T = TypeVar("T")

PARAMS_FILE = "params.json"
"""The parameters file of a remote run, in the run's private `$AHOP_FILES_DIR`."""
WITH_PARAMS_FILE = ["/bin/sh", "-c", 'AHOP_PARAMS_FILE="$AHOP_FILES_DIR/$1"; export AHOP_PARAMS_FILE; shift; exec "$@"']
"""Starts the entry with `AHOP_PARAMS_FILE` naming the file, whose directory only the host knows: a constant program
whose arguments are the file's name and the entry's argv (no secret among them), as arguments, never a shell line."""
CLEANUP_SECONDS = 15.0
"""The most the removal of a run's private copy may take once its run ended."""


class ReportHost(Protocol):
    """Sends one event of a host's run (`host_started`, `host_finished`) of the attempt."""

    def __call__(self, kind: EventType, *, host: str, **outcome: Any) -> Awaitable[None]: ...


@dataclass(frozen=True)
class HostResult:
    """How the run on one host ended, as its `host_finished` event says."""

    name: str
    status: HostFinalStatus
    exit_code: int | None = None
    error: str | None = None
    digest: str | None = None
    """The 64 hex of the content the host verified and ran; None when it never got it."""

    def why(self) -> str:
        """A short reason for the task's summary: `exit 1`, `unreachable`, …"""
        if self.status == "failed" and self.exit_code is not None:
            return f"exit {self.exit_code}"
        return self.status


@dataclass(frozen=True)
class TargetsOutcome:
    """How the attempt ended over all its hosts; `exit_code` of a targets task is always None."""

    status: FinalStatus
    error: str | None


def verdict(results: Sequence[HostResult], max_fail_percentage: int, cancel_requested: bool) -> TargetsOutcome:
    """The task's status over its hosts: `cancelled` when a cancel was requested; else, with N hosts of which F
    did not succeed, `timeout` (the deadline struck a host) or `failed` when F*100 > max_fail_percentage*N, and
    `success` otherwise. The error names the hosts that did not succeed."""
    missed = [result for result in results if result.status != "success"]
    summary = (
        f"{len(missed)} of {len(results)} hosts did not succeed "
        f"({', '.join(f'{result.name}: {result.why()}' for result in missed)})"
    )
    if cancel_requested:
        return TargetsOutcome("cancelled", "the task was cancelled" + (f"; {summary}" if missed else ""))
    if len(missed) * 100 > max_fail_percentage * len(results):
        status: FinalStatus = "timeout" if any(result.status == "timeout" for result in missed) else "failed"
        return TargetsOutcome(status, f"{summary}; over max_fail_percentage {max_fail_percentage}")
    if missed:
        return TargetsOutcome("success", f"{summary}; within max_fail_percentage {max_fail_percentage}")
    return TargetsOutcome("success", None)


class _Stopped(Exception):
    """A step of a host's run was cut short by the task's deadline or its cancel."""

    def __init__(self, status: Literal["timeout", "cancelled"]) -> None:
        super().__init__(status)
        self.status: Literal["timeout", "cancelled"] = status


@dataclass(frozen=True)
class TargetsSettings:
    """The worker's settings a run on targets uses."""

    connect_timeout: float
    """Seconds one host's login may take."""
    kill_grace: float
    """Seconds between SIGTERM and SIGKILL on a host when a run is stopped."""
    shutdown_grace: float
    """Seconds a stopping worker may spend telling the server how its hosts ended."""


class TargetsRun:
    """Runs one attempt of a `targets` job on all its hosts and reports each host's run; `run` gives the verdict."""

    def __init__(
        self,
        job: TaskJob,
        secrets: JobSecrets,
        entry: Path,
        tar: Path,
        *,
        logs: LogWriter,
        report: ReportHost,
        cancelled: asyncio.Event,
        metrics: WorkerMetrics,
        settings: TargetsSettings,
    ) -> None:
        assert job.targets is not None
        self.job = job
        self.plan: TargetPlan = job.targets
        self.secrets = secrets
        self.entry = entry
        """The store entry (held in use by the caller): where the entry file is checked."""
        self.tar = tar
        """The canonical tar of the template, whose sha256 is the job's digest."""
        self.logs = logs
        self.report = report
        self.cancelled = cancelled
        self.metrics = metrics
        self.settings = settings
        self.results: dict[str, HostResult] = {}
        self._started: set[str] = set()
        self._forks = asyncio.Semaphore(self.plan.forks)
        self._deadline = 0.0

    async def run(self) -> TargetsOutcome:
        """Run on every host of the plan, `forks` at once, and give the verdict. Cancelled (the worker stops past
        its grace), every run is stopped and the hosts not finished are reported before the cancel goes on."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.job.timeout
        try:
            texts = param_texts(self.secrets.unmasked(self.job.params))
            # On a host every user may read any process's argv: password values go by environment and file only.
            shown = {name: text for name, text in texts.items() if name not in self.job.secret_params}
            entry = entry_argument(self.entry, self.job.entry_file)
            argv = [INTERPRETERS[self.job.script_type], *script_arguments(entry, shown)]
        except NotRunnable as exc:
            for host in self.plan.hosts:
                await self._finish(HostResult(host.name, "failed", error=f"not started: {exc}"))
            return TargetsOutcome("failed", str(exc))
        runs = [asyncio.ensure_future(self._host(host, argv, texts)) for host in self.plan.hosts]
        try:
            await asyncio.gather(*runs)
        except asyncio.CancelledError:
            for run in runs:
                run.cancel()  # each run's channel closes: its wrapper on the host stops the run (DESIGN §11)
            await asyncio.wait(runs, timeout=self.settings.shutdown_grace)
            try:
                await asyncio.wait_for(self._report_unfinished(), self.settings.shutdown_grace)
            except TimeoutError:
                log.warning("stopping without reporting the hosts of task %s: Redis is away", self.job.task_id)
            raise
        results = [self.results[host.name] for host in self.plan.hosts]
        return verdict(results, self.plan.max_fail_percentage, self.cancelled.is_set())

    def _remaining(self) -> float:
        return self._deadline - asyncio.get_running_loop().time()

    async def _host(self, host: JobHost, argv: list[str], texts: dict[str, str]) -> None:
        async with self._forks:
            if (refusal := self._not_to_start()) is not None:
                await self._finish(HostResult(host.name, refusal[0], error=refusal[1]))
                return
            self._started.add(host.name)
            await self.report("host_started", host=host.name)
            try:
                result = await self._run_on(host, argv, texts)
            except Exception as exc:  # whatever went wrong on one host, the others go on and the server hears of it
                log.exception("task %s: the run on host %s failed in the worker", self.job.task_id, host.name)
                result = HostResult(host.name, "failed", error=f"the worker could not run on this host: {exc}")
            await self._finish(result)

    def _not_to_start(self) -> tuple[HostFinalStatus, str] | None:
        """Why a host whose turn came is not started, if it is not. The hosts that failed are those that ran."""
        if self.cancelled.is_set():
            return "cancelled", "not started: the task was cancelled"
        if self._remaining() <= 0:
            return "timeout", f"not started: the task's timeout of {self.job.timeout} s struck before this host's turn"
        failed = sum(1 for name, result in self.results.items() if name in self._started and result.status != "success")
        hosts, allowed = len(self.plan.hosts), self.plan.max_fail_percentage
        if failed * 100 > allowed * hosts:
            return "cancelled", f"not started: {failed} of {hosts} hosts failed, over max_fail_percentage {allowed}"
        return None

    async def _run_on(self, host: JobHost, argv: list[str], texts: dict[str, str]) -> HostResult:
        secret = self.secrets.logins.get(host.login)
        if secret is None:
            return HostResult(host.name, "failed", error=f"the job holds no login {host.login!r} for this host")
        try:
            login = _login(secret)
        except ValueError as exc:
            return HostResult(host.name, "failed", error=f"the login of this host cannot be used: {exc}")
        target = Target(host.name, host.address, host.port, host.username, tuple(host.host_keys))
        try:
            conn = await self._step(connect(target, login, timeout=self.settings.connect_timeout))
        except (Unreachable, HostKeyMismatch, LoginRefused) as exc:
            return HostResult(host.name, "unreachable", error=str(exc))
        except _Stopped as stop:
            return HostResult(host.name, stop.status, error=self._stopped_before(stop, "while connecting"))
        except (TargetError, ValueError) as exc:  # a pinned line that is no key, a port out of range
            return HostResult(host.name, "failed", error=f"this host's inventory entry cannot be used: {exc}")
        try:
            digest = self.job.blob.digest
            try:
                delivery = await self._step(ensure_content(conn, digest, self.tar))
                self._count(delivery)
                workdir = await self._step(private_copy(conn, digest))
            except Unreachable as exc:
                return HostResult(host.name, "unreachable", error=str(exc))
            except TargetError as exc:
                return HostResult(host.name, "failed", error=f"the template could not be put on this host: {exc}")
            except _Stopped as stop:
                return HostResult(host.name, stop.status, error=self._stopped_before(stop, "delivering the template"))
            try:
                return await self._execute(conn, host, workdir, argv, texts, secret)
            finally:
                await self._remove(conn, host, workdir)
        finally:
            conn.close()
            await conn.wait_closed()

    async def _execute(
        self,
        conn: SSHClientConnection,
        host: JobHost,
        workdir: str,
        argv: list[str],
        texts: dict[str, str],
        secret: LoginSecret,
    ) -> HostResult:
        digest = self.job.blob.digest.hex
        if self.cancelled.is_set():
            return HostResult(host.name, "cancelled", error="cancelled before the run started", digest=digest)
        remaining = self._remaining()
        if remaining <= 0:
            late = f"the task's timeout of {self.job.timeout} s struck before the run started"
            return HostResult(host.name, "timeout", error=late, digest=digest)
        command = RemoteCommand(
            workdir=workdir,
            argv=[*WITH_PARAMS_FILE, "ahop-params", PARAMS_FILE, *argv],
            environment={
                **param_environment(texts),
                "AHOP_TASK_ID": self.job.task_id,
                "AHOP_TASK_ATTEMPT": str(self.job.attempt),
                "AHOP_HOST_NAME": host.name,
            },
            files={PARAMS_FILE: json.dumps(self.secrets.unmasked(self.job.params), ensure_ascii=False).encode()},
            sudo=self.plan.require_sudo,
            become_password=secret.become_password,
        )
        ending = await run_remote(
            conn,
            command,
            timeout=remaining,
            cancelled=self.cancelled,
            on_line=self._line_handler(host, texts, secret),
            kill_grace=self.settings.kill_grace,
        )
        error = ending.error
        if ending.status == "timeout":
            error = f"the task's timeout of {self.job.timeout} s struck while the run went on: {error}"
        return HostResult(host.name, ending.status, ending.exit_code, error, digest)

    def _line_handler(self, host: JobHost, texts: dict[str, str], secret: LoginSecret) -> Callable[[str, str], None]:
        logins = (secret.password, secret.passphrase, secret.become_password)
        secrets = secret_pattern(
            [*(texts.get(name, "") for name in self.job.secret_params), *(value for value in logins if value)]
        )

        def on_line(stream: str, line: str) -> None:
            self.logs.add(stream, secrets.sub(MASK, line) if secrets is not None else line, host.name)

        return on_line

    async def _step(self, step: Awaitable[T]) -> T:
        """The result of `step`, unless the task's deadline or its cancel comes first (`_Stopped`, `step` cancelled)."""
        work = asyncio.ensure_future(step)
        cancel = asyncio.ensure_future(self.cancelled.wait())
        try:
            done, _ = await asyncio.wait(
                [work, cancel], timeout=max(0.0, self._remaining()), return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                return work.result()
            raise _Stopped("cancelled" if cancel in done else "timeout")
        finally:
            cancel.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait([work])
                if not work.cancelled() and work.exception() is None:
                    _close_quietly(work.result())

    def _stopped_before(self, stop: _Stopped, doing: str) -> str:
        if stop.status == "cancelled":
            return f"cancelled {doing}; the run did not start"
        return f"the task's timeout of {self.job.timeout} s struck {doing}; the run did not start"

    def _count(self, delivery: Delivery) -> None:
        result = "replaced" if delivery.replaced else "sent" if delivery.sent else "reused"
        self.metrics.host_content.labels(result=result).inc()
        self.metrics.host_content_bytes.inc(delivery.bytes_sent)

    async def _remove(self, conn: SSHClientConnection, host: JobHost, workdir: str) -> None:
        """Remove the run's private copy; a host that does not answer keeps it (under its cache's runs/)."""
        try:
            async with asyncio.timeout(CLEANUP_SECONDS):
                await remove_run(conn, workdir)
        except (TargetError, ValueError, TimeoutError) as exc:
            log.warning(
                "task %s: the run copy %s on host %s was not removed: %s", self.job.task_id, workdir, host.name, exc
            )

    async def _finish(self, result: HostResult) -> None:
        self.results[result.name] = result
        self.metrics.host_runs.labels(status=result.status).inc()
        await self.report(
            "host_finished",
            host=result.name,
            status=result.status,
            exit_code=result.exit_code,
            error=result.error,
            digest=result.digest,
        )

    async def _report_unfinished(self) -> None:
        for host in self.plan.hosts:
            if host.name in self.results:
                continue
            if host.name in self._started:
                error = "the worker stopped before this host's run finished; the run on the host was stopped"
                await self._finish(HostResult(host.name, "failed", error=error))
            else:
                await self._finish(HostResult(host.name, "cancelled", error="not started: the worker stopped"))


def _login(secret: LoginSecret) -> Login:
    """The login of a credential: its private key (with its passphrase) when it has one, else its password."""
    if secret.private_key is not None:
        return Login(private_key=secret.private_key, passphrase=secret.passphrase)
    return Login(password=secret.password)


def _close_quietly(value: object) -> None:
    """Close a connection that a step made just as it was cut short, so that it does not linger."""
    close = getattr(value, "close", None)
    if callable(close):
        close()
