"""An Ansible template on a task's target hosts: one ansible-playbook on the worker, each host's result, the verdict.

The playbook runs through `worker.runner.run_script` as any Ansible template does (run copy, supervisor, timeout,
cancel), with the inventory, known hosts, keys and logins that `worker.ansible_inventory` writes into a private
directory beside the run copy, removed when the run ends, whatever happened. Each host's result comes from the
`ahop_host_results` callback plugin, not from parsing the output. The task's verdict follows the rule of
DESIGN §11: a cancel makes it `cancelled`; otherwise more than `max_fail_percentage` percent of hosts not
succeeding makes it `timeout` when the deadline struck a host, else `failed`; otherwise it is `success`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worker.ansible_inventory import PlaybookSetup, write_playbook_setup
from worker.job_secrets import JobSecrets
from worker.output import MASK, LineCallback, secret_pattern
from worker.protocol import FinalStatus, HostFinalStatus, TargetPlan
from worker.rundir import NotRunnable, run_as_user
from worker.runner import CancelCheck, RunOutcome, RunRequest, run_script

NOT_REACHED = "not reached by the playbook"
ReportHost = Callable[..., Awaitable[None]]
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HostResult:
    """How the playbook ended on one host: `success`, `failed` or `unreachable` (or, when the run was stopped,
    `timeout` or `cancelled`), with the first failure's message."""

    status: HostFinalStatus
    error: str | None = None

    @property
    def reached(self) -> bool:
        """Whether the playbook ran anything on the host."""
        return self.status in ("success", "failed")


def host_results(path: Path, plan: TargetPlan) -> dict[str, HostResult]:
    """Each host's result from the callback plugin's lines at `path`, by host name, in the plan's order.

    A host with unreachable tasks (or whose first problem was its host key) is `unreachable`, one with failed tasks
    `failed` (with the first message of either), one the recap counts without either `success`; a host the playbook
    never processed (a play for other hosts, a playbook that stopped early) is `failed` with the error "not reached
    by the playbook", unless it was found unreachable before the playbook stopped.
    """
    summaries: dict[str, dict[str, Any]] = {}
    first_problem: dict[str, tuple[str, str]] = {}
    for event in _events(path):
        name = str(event.get("host", ""))
        if event.get("event") == "summary":
            summaries[name] = event
        elif event.get("event") in ("failed", "unreachable") and name not in first_problem:
            first_problem[name] = (str(event["event"]), str(event.get("message", "")))
    return {host.name: _result(summaries.get(host.name), first_problem.get(host.name)) for host in plan.hosts}


def _result(summary: dict[str, Any] | None, problem: tuple[str, str] | None) -> HostResult:
    kind, message = problem if problem is not None else ("", None)
    if summary is None:  # an unreachable host stays so in a run stopped before its recap
        return HostResult("unreachable", message) if kind == "unreachable" else HostResult("failed", NOT_REACHED)
    if summary.get("unreachable", 0) or kind == "unreachable":
        return HostResult("unreachable", message)
    if summary.get("failures", 0):
        return HostResult("failed", message)
    return HostResult("success")


def _events(path: Path) -> list[dict[str, Any]]:
    """The plugin's lines; a last line cut short by a stopped run is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def run_playbook_on_targets(
    request: RunRequest,
    plan: TargetPlan,
    secrets: JobSecrets,
    on_line: LineCallback,
    cancelled: CancelCheck,
    report_host: ReportHost,
) -> RunOutcome:
    """Run the request's playbook on the plan's hosts with one ansible-playbook, and report each host.

    `host_started` goes out for every host first, `host_finished` for every host once the playbook has ended (a
    host whose login cannot be used fails without running). Output lines reach `on_line` with every secret of the
    logins masked. A timeout or cancel stops the playbook; each host it had not finished ends `timeout` or
    `cancelled` (an unreachable one stays `unreachable`). The returned outcome is the task's verdict over its
    hosts; its exit code is None.
    """
    for host in plan.hosts:
        await report_host(host=host.name, type="host_started")
    private = request.runs_dir / f"{request.task_id}.targets"
    try:
        try:
            setup = await asyncio.to_thread(_setup, request, plan, secrets, private)
        except (NotRunnable, OSError) as exc:
            outcome = RunOutcome("failed", None, f"the playbook's inventory could not be prepared: {exc}")
            results = {host.name: HostResult("failed", outcome.error) for host in plan.hosts}
        else:
            outcome, results = await _run(request, plan, setup, on_line, cancelled)
    finally:
        await asyncio.to_thread(shutil.rmtree, private, True)
    digest = request.source.name if _HEX64.fullmatch(request.source.name) else None
    for name, result in results.items():
        await report_host(
            host=name,
            type="host_finished",
            status=result.status,
            exit_code=None,
            error=result.error,
            digest=digest if result.reached else None,
        )
    return task_verdict(plan, results, outcome)


def _setup(request: RunRequest, plan: TargetPlan, secrets: JobSecrets, private: Path) -> PlaybookSetup:
    request.runs_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    return write_playbook_setup(plan, secrets, private, run_as_user(request.run_as))


async def _run(
    request: RunRequest,
    plan: TargetPlan,
    setup: PlaybookSetup,
    on_line: LineCallback,
    cancelled: CancelCheck,
) -> tuple[RunOutcome, dict[str, HostResult]]:
    refused = {name: HostResult("failed", error) for name, error in setup.refused.items()}
    if not setup.inventory_hosts:
        outcome = RunOutcome("failed", None, "no host could be logged in to, so the playbook did not run")
        return outcome, _in_plan_order(plan, refused)
    playbook = replace(
        request,
        extra_args=setup.arguments,
        extra_env={**request.extra_env, **setup.environment},
    )
    outcome = await run_script(playbook, _masking(on_line, setup.secrets), cancelled)
    found = await asyncio.to_thread(host_results, setup.results_file, plan)
    results = {**{name: _ended(found[name], outcome) for name in setup.inventory_hosts}, **refused}
    return outcome, _in_plan_order(plan, results)


def _ended(result: HostResult, outcome: RunOutcome) -> HostResult:
    """A host's result in the light of how ansible-playbook ended."""
    if result.error != NOT_REACHED:
        return result
    if outcome.status in ("timeout", "cancelled"):
        return HostResult(outcome.status, f"the playbook was stopped before it finished on this host: {outcome.error}")
    if outcome.exit_code is None:
        return HostResult("failed", outcome.error)
    if outcome.exit_code != 0:
        return HostResult("failed", f"{NOT_REACHED} (ansible-playbook exited with {outcome.exit_code})")
    return result


def _in_plan_order(plan: TargetPlan, results: Mapping[str, HostResult]) -> dict[str, HostResult]:
    return {host.name: results[host.name] for host in plan.hosts}


def _masking(on_line: LineCallback, secrets: list[str]) -> LineCallback:
    pattern = secret_pattern(secrets)
    if pattern is None:
        return on_line

    async def masked(stream: str, line: str) -> None:
        await on_line(stream, pattern.sub(MASK, line))

    return masked


def task_verdict(plan: TargetPlan, results: Mapping[str, HostResult], run: RunOutcome) -> RunOutcome:
    """The task's outcome over its hosts' results (DESIGN §11), its exit code None."""
    if run.status == "cancelled":
        return RunOutcome("cancelled", None, run.error)
    unsuccessful = {name: result for name, result in results.items() if result.status != "success"}
    if not unsuccessful:
        return RunOutcome("success", None, None)
    which = ", ".join(f"{name}: {result.status}" for name, result in unsuccessful.items())
    summary = f"{len(unsuccessful)} of {len(results)} hosts did not succeed ({which})"
    if len(unsuccessful) * 100 <= plan.max_fail_percentage * len(results):
        return RunOutcome("success", None, f"{summary}; within max_fail_percentage {plan.max_fail_percentage}")
    status: FinalStatus = "timeout" if any(result.status == "timeout" for result in results.values()) else "failed"
    return RunOutcome(status, None, f"{summary}; over max_fail_percentage {plan.max_fail_percentage}")
