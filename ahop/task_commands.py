"""`ahop task …`: run a template and follow its output; list, show, cancel and read tasks through the API.

`ahop task run` exits with the task's exit code: 0 on success, the script's own code when it failed (128 + N when a
signal N ended it), 124 when it timed out, 1 when it was cancelled or lost or failed without running; 2 for bad
input (with the API's message) and 3 when the API does not answer (`ahop.exit_codes`). A task is named by its id or
by the start of it, as a table may shorten it. A script's output goes to the same stream it was written to:
stdout lines to stdout, stderr lines to stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import click

from ahop.api_client import auth_headers, call_api, check_answer, client_settings, resolve_task, resolve_template
from ahop.client_commands import json_option
from ahop.console import echo_json, echo_table, fail, show, show_one
from ahop.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_TIMED_OUT,
    EXIT_UNAVAILABLE,
)
from worker.protocol import TASK_STATUSES

TASK_COLUMNS = ["id", "template_code", "version", "status", "attempt", "exit_code", "worker", "created_at"]
HOST_RUN_COLUMNS = ["host", "address", "status", "exit_code", "error", "digest", "started_at", "finished_at"]
RECONNECTS = 5
"""Times in a row a broken log stream is resumed (after the last line seen) before giving up."""


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event: `name` is `message` unless the server named it."""

    name: str
    data: str
    id: str | None


def parse_events(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Server-sent events from the lines of a `text/event-stream` (the WHATWG rules, without `retry`)."""
    name, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):  # a comment: keeps an idle connection open
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value or "message"
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


@dataclass(frozen=True)
class Ending:
    """How a task ended, from the `end` event of its log stream."""

    status: str
    exit_code: int | None
    error: str | None = None


def exit_code_of(ending: Ending) -> int:
    """The exit code `ahop task run` ends with for a task that ended so."""
    if ending.status == "success":
        return EXIT_OK
    code = ending.exit_code
    if ending.status == "timeout":
        return EXIT_TIMED_OUT
    if ending.status != "failed":  # cancelled, lost: whatever code the stopped script had is not its verdict
        return EXIT_PROBLEMS
    if code is not None and 0 < code < 256:
        return code
    if code is not None and -128 < code < 0:  # killed by a signal: report it as a shell does
        return 128 - code
    return EXIT_PROBLEMS


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    """`-p key=value` options as a mapping; values stay strings (the server coerces them to the parameter types)."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"-p expects KEY=VALUE, got {pair!r}", EXIT_BAD_INPUT)
        if key in params:
            fail(f"parameter {key!r} is given twice", EXIT_BAD_INPUT)
        params[key] = value
    return params


def follow(task_id: str, *, after: int = 0, echo: bool = True, host: str | None = None) -> Ending:
    """Print a task's output as it comes (from line `after` + 1) until the task ends; how it ended.

    A stream that breaks is resumed after the last line printed, so no line is printed twice or skipped.
    """
    import httpx

    settings = client_settings()
    url = f"{settings.api_url.rstrip('/')}/api/v1/tasks/{task_id}/logs"
    # The read timeout bounds silence on the stream; after it, the stream is simply resumed.
    timeout = httpx.Timeout(settings.client_timeout, connect=min(settings.client_timeout, 10.0))
    last, broken = after, 0
    while True:
        params = {"follow": "true", **({"after": str(last)} if last else {}), **({"host": host} if host else {})}
        try:
            with httpx.stream("GET", url, params=params, headers=auth_headers(settings), timeout=timeout) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    check_answer(answer)
                for event in parse_events(answer.iter_lines()):
                    broken = 0
                    if event.name == "end":
                        end = json.loads(event.data)
                        return Ending(end["status"], end.get("exit_code"), end.get("error"))
                    line = json.loads(event.data)
                    if int(line["seq"]) <= last:
                        continue
                    last = int(line["seq"])
                    if echo:
                        click.echo(line["line"], err=line["stream"] == "stderr")
            problem = "the log stream ended before the task did"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        broken += 1
        if broken > RECONNECTS:
            fail(f"lost the API at {settings.api_url} while following task {task_id}: {problem}", EXIT_UNAVAILABLE)
        time.sleep(min(broken, 5))


def _finish(task_id: str, ending: Ending, as_json: bool) -> None:
    if as_json:
        echo_json(call_api("GET", f"/api/v1/tasks/{task_id}"))
    if ending.status != "success":
        said = f"ahop: task {task_id} {ending.status}"
        if ending.status == "failed" and ending.exit_code is not None:
            said += f" with exit code {ending.exit_code}"
        if ending.error:
            said += f": {ending.error}"
        click.echo(said, err=True)
    raise SystemExit(exit_code_of(ending))


def _follow_and_exit(task_id: str, *, after: int, as_json: bool, host: str | None = None) -> None:
    try:
        ending = follow(task_id, after=after, echo=not as_json, host=host)
    except KeyboardInterrupt:
        click.echo(
            f"\nahop: stopped following task {task_id}; it goes on (`ahop task cancel {task_id}` stops it)", err=True
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    _finish(task_id, ending, as_json)


@click.group()
def task() -> None:
    """Tasks: run a template, follow its output, list, show and cancel (through the API)."""


@task.command("run")
@click.argument("template_ref", metavar="TEMPLATE")
@click.option("-p", "--param", "pairs", multiple=True, metavar="KEY=VALUE", help="A parameter (repeatable).")
@click.option("--version", type=click.IntRange(min=1), help="Run this version (default: the current one).")
@click.option("--timeout", type=click.IntRange(min=1), help="Seconds the script may run (default: the template's).")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="A target host of the inventory (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="Every host with this label (repeatable).")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Print the output until the task ends.")
@json_option
def task_run(
    template_ref: str,
    pairs: tuple[str, ...],
    version: int | None,
    timeout: int | None,
    hosts: tuple[str, ...],
    labels: tuple[str, ...],
    follow: bool,
    as_json: bool,
) -> None:
    """Run TEMPLATE (a code or an id) and, by default, print its output and exit with its exit code. A template
    that runs on targets runs on the hosts named by --host and --label.

    With --json nothing but JSON goes to stdout: the task as created (--no-follow) or as it ended.
    """
    params = parse_params(pairs)
    payload: dict[str, Any] = {"template_id": resolve_template(template_ref), "params": params}
    if hosts:
        payload["hosts"] = list(hosts)
    if labels:
        payload["labels"] = list(labels)
    if version is not None:
        payload["version"] = version
    if timeout is not None:
        payload["timeout"] = timeout
    created = _create(payload)
    for warning in created.get("warnings", []):  # accepted, but it may wait: say why before waiting
        click.echo(f"ahop: warning: {warning}", err=True)
    if not follow:
        show(created, as_json, TASK_COLUMNS)
        return
    click.echo(f"ahop: task {created['id']} {created['status']}", err=True)
    _follow_and_exit(str(created["id"]), after=0, as_json=as_json)


def _create(payload: dict[str, Any]) -> dict[str, Any]:
    """POST the task; a 4xx (a version that does not exist, a bad parameter) is bad input."""
    created: dict[str, Any] = call_api("POST", "/api/v1/tasks", payload)
    return created


@task.command("list")
@click.option("--status", type=click.Choice(TASK_STATUSES), help="Only tasks in this status.")
@click.option("--template", "template_ref", metavar="TEMPLATE", help="Only tasks of this template (code or id).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(1, 500), default=50, show_default=True)
@json_option
def task_list(status: str | None, template_ref: str | None, page: int, page_size: int, as_json: bool) -> None:
    """List tasks, newest first."""
    query: dict[str, Any] = {"page": page, "page_size": page_size}
    if status:
        query["status"] = status
    if template_ref:
        query["template_id"] = resolve_template(template_ref)
    show(call_api("GET", f"/api/v1/tasks?{urlencode(query)}"), as_json, TASK_COLUMNS)


@task.command("show")
@click.argument("task_ref", metavar="TASK")
@json_option
def task_show(task_ref: str, as_json: bool) -> None:
    """Show one task (its id, or the start of it) as `key: value` lines; for a task on targets, then a table of
    its current attempt's runs on its hosts (`host_runs` in the JSON)."""
    task_id = resolve_task(task_ref)
    answer = call_api("GET", f"/api/v1/tasks/{task_id}")
    if answer.get("execution") != "targets":
        show_one(answer, as_json)
        return
    runs = call_api("GET", f"/api/v1/tasks/{task_id}/hosts")
    if as_json:
        echo_json({**answer, "host_runs": runs})
        return
    show_one({**answer, "targets": ", ".join(target["name"] for target in answer.get("targets") or [])}, False)
    click.echo("")
    echo_table(runs, HOST_RUN_COLUMNS)


def cancel_outcome(answer: dict[str, Any]) -> str:
    """What became of a task the API was asked to cancel: `cancelled` at once when it had not started, or
    `cancelling` while its worker stops the script (the answer's status is still `running` then)."""
    if answer["status"] == "cancelled":
        return "cancelled"
    return "cancelling" if answer.get("cancel_requested") else str(answer["status"])


@task.command("cancel")
@click.argument("task_ref", metavar="TASK")
@json_option
def task_cancel(task_ref: str, as_json: bool) -> None:
    """Cancel a task: one that has not started never runs; a running one is stopped. Prints `cancelled`, or
    `cancelling` while the worker stops a running script (`ahop task logs TASK --follow` waits for its end)."""
    answer = call_api("POST", f"/api/v1/tasks/{resolve_task(task_ref)}/cancel")
    if as_json:
        echo_json(answer)
    else:
        click.echo(f"task {answer['id']} {cancel_outcome(answer)}")


@task.command("logs")
@click.argument("task_ref", metavar="TASK")
@click.option("--follow", is_flag=True, help="Keep printing until the task ends; then exit like `ahop task run`.")
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True, help="Only lines after this seq.")
@click.option("--host", default=None, metavar="NAME", help="Only the lines this target host's runs printed.")
@json_option
def task_logs(task_ref: str, follow: bool, after: int, host: str | None, as_json: bool) -> None:
    """Print a task's output (stdout lines to stdout, stderr lines to stderr)."""
    task_id = resolve_task(task_ref)
    if follow:
        _follow_and_exit(str(task_id), after=after, as_json=as_json, host=host)
        return
    query = urlencode({**({"after": after} if after else {}), **({"host": host} if host else {})})
    logs = call_api("GET", f"/api/v1/tasks/{task_id}/logs" + (f"?{query}" if query else ""))
    if as_json:
        echo_json(logs)
        return
    for item in logs["items"]:
        click.echo(item["line"], err=item["stream"] == "stderr")
    if logs.get("truncated"):
        click.echo("ahop: the oldest lines were dropped (a task's log keeps its newest lines)", err=True)
