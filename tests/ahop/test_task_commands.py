"""`ahop task …` and the template commands it builds on, against a real `ahop serve` process (and, to run a task
to its end, a real worker)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis

from ahop.task_commands import ServerEvent, parse_events
from app.db.models import Role
from tests.support.cli import ahop, template_import
from tests.support.fleet import Fleet
from tests.support.shout import import_shout
from tests.support.ssh_keys import key_pair
from tests.support.tenants import Caller, token_of
from tests.support.waiting import until
from worker.protocol import EVENTS_STREAM, WORKERS_KEY, Event, Heartbeat, LogLine, log_stream, worker_inbox_key


def import_template(url: str, caller: Caller, origin: Path, code: str, repository_id: int | None = None) -> int:
    admin = token_of(caller, Role.ADMIN)
    if repository_id is None:
        added = ahop(url, admin, "repo", "add", "ops", str(origin), "--json")
        assert added.returncode == 0, added.stderr
        repository_id = int(json.loads(added.stdout)["id"])
    imported = ahop(url, admin, *template_import(repository_id, code, code), "--json")
    assert imported.returncode == 0, imported.stderr
    return int(json.loads(imported.stdout)["id"])


def test_bad_input_exits_2_naming_what_is_wrong(api_url: str, alice: Caller, origin: Path) -> None:
    token = token_of(alice)
    import_template(api_url, alice, origin, "cleanup")
    cases: list[tuple[tuple[str, ...], str]] = [
        (("task", "run", "cleanup", "-p", "days"), "-p expects KEY=VALUE, got 'days'"),
        (("task", "run", "cleanup", "-p", "=3"), "-p expects KEY=VALUE"),
        (("task", "run", "cleanup", "-p", "days=1", "-p", "days=2"), "parameter 'days' is given twice"),
        (("task", "run", "cleanup", "--version", "0"), "--version"),
        (("task", "run", "cleanup", "--timeout", "-5"), "--timeout"),
        (("task", "run", "no_such_code"), "no template 'no_such_code'"),
        (("task", "run", "987654"), "no template '987654'"),
        (("task", "show", "not-a-task-id"), "'not-a-task-id' is not a task id: expected a UUID or the start of one"),
        (("task", "logs", "42", "--after", "1"), "no task '42'"),
        (("task", "list", "--status", "exploded"), "'exploded' is not one of"),
        (("task", "list", "--template", "no_such_code"), "no template 'no_such_code'"),
    ]
    for args, message in cases:
        result = ahop(api_url, token, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    unknown = ahop(api_url, token, "task", "run", "cleanup", "-p", "weeks=3")  # the server's schema check speaks
    assert unknown.returncode == 2, unknown.stderr
    assert "params.weeks: unknown parameter; expected one of: days" in unknown.stderr
    assert _json(ahop(api_url, token, "task", "list", "--json"))["total"] == 0


def test_without_a_token_or_a_reachable_api(api_url: str) -> None:
    missing = ahop(api_url, None, "task", "run", "cleanup")
    assert (missing.returncode, "AHOP_TOKEN" in missing.stderr) == (2, True)
    unreachable = ahop("http://127.0.0.1:1", "ahop_x", "task", "run", "cleanup", "-p", "days=3")
    assert (unreachable.returncode, "did not answer" in unreachable.stderr) == (3, True)
    refused = ahop(api_url, "ahop_wrong", "task", "run", "cleanup")
    assert (refused.returncode, "401" in refused.stderr) == (2, True)


def test_server_sent_events_are_read_as_the_standard_says() -> None:
    lines = [
        ": keep-alive",
        "id: 1",
        'data: {"seq": 1, "stream": "stdout", "line": "first"}',
        "",
        "",
        "id: 2",
        "data:two",
        "data: lines",
        "",
        "event: end",
        'data: {"status": "failed", "exit_code": 4}',
        "",
    ]
    assert list(parse_events(lines)) == [
        ServerEvent("message", '{"seq": 1, "stream": "stdout", "line": "first"}', "1"),
        ServerEvent("message", "two\nlines", "2"),
        ServerEvent("end", '{"status": "failed", "exit_code": 4}', "2"),
    ]


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_template_pool_and_prefetch_from_the_command_line(
    api_url: str,
    alice: Caller,
    origin: Path,
    redis_url: str,
) -> None:
    admin = token_of(alice, Role.ADMIN)
    repository_id = _json(ahop(api_url, admin, "repo", "add", "ops", str(origin), "--json"))["id"]
    template = _json(
        ahop(
            api_url,
            admin,
            *template_import(repository_id, "gpu_cleanup", "GPU"),
            "--pool",
            "gpu",
            "--max-attempts",
            "2",
            "--retry-on",
            "lost",
            "--retry-on",
            "timeout",
            "--json",
        )
    )
    assert (template["pool"], template["max_attempts"], template["retry_on"]) == ("gpu", 2, ["lost", "timeout"])

    none_live = ahop(api_url, token_of(alice), "template", "prefetch", str(template["id"]))
    assert (none_live.returncode, none_live.stdout.strip()) == (0, "no worker of pool 'gpu' is live; none was asked")

    now = datetime.now(UTC).isoformat()
    heartbeat = Heartbeat(
        id="gpu-1",
        host="gpu-1.example",
        pid=1,
        pools=["gpu"],
        running=[],
        cache_bytes=0,
        cache_entries=0,
        downloads=0,
        version="1",
        started_at=now,
        at=now,
    )
    redis = Redis.from_url(redis_url)
    try:
        redis.hset(WORKERS_KEY, "gpu-1", heartbeat.to_json())
        asked = ahop(api_url, token_of(alice), "template", "prefetch", str(template["id"]))
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip() == "asked 1 live worker(s) of pool 'gpu' to prefetch: gpu-1"
        message = json.loads(redis.lpop(worker_inbox_key("gpu-1")) or b"null")  # type: ignore[arg-type]
    finally:
        redis.close()
    assert "sha256:" + message["digest"] == template["artifact"]["digest"]
    viewer = ahop(api_url, token_of(alice, Role.VIEWER), "template", "prefetch", str(template["id"]))
    assert (viewer.returncode, "403" in viewer.stderr) == (2, True)


def test_task_run_follows_the_output_and_exits_with_the_scripts_code(
    api_url: str,
    alice: Caller,
    fleet: Fleet,
    tmp_path: Path,
) -> None:
    ids = import_shout(api_url, alice, tmp_path, ("shout", "shout_loud", "7"))
    fleet.start("w1")
    token = token_of(alice)
    workers = _json(ahop(api_url, token, "worker", "list", "--json"))
    assert [(worker["id"], worker["live"]) for worker in workers["items"]] == [("w1", True)]

    ok = ahop(api_url, token, "task", "run", "shout", "-p", "who=world")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert ok.stdout == "hello world\n"  # stdout lines to stdout, and nothing else
    assert "to stderr" in ok.stderr

    failed = ahop(api_url, token, "task", "run", "shout", "-p", "who=x", "-p", "code=7")
    assert failed.returncode == 7, (failed.stdout, failed.stderr)
    assert "failed with exit code 7" in failed.stderr

    by_id = ahop(api_url, token, "task", "run", str(ids["shout_loud"]), "-p", "who=id", "--json")
    ended = _json(by_id)  # only JSON on stdout: the task as it ended
    assert (ended["template_id"], ended["status"], ended["exit_code"]) == (ids["shout_loud"], "success", 0)
    by_digits = _json(ahop(api_url, token, "task", "run", "7", "-p", "who=code", "--no-follow", "--json"))
    assert by_digits["template_id"] == ids["7"]  # a code made of digits is that template, not template id 7

    timed_out = ahop(api_url, token, "task", "run", "shout", "-p", "who=t", "-p", "nap=120", "--timeout", "1")
    assert timed_out.returncode == 124, (timed_out.stdout, timed_out.stderr)
    assert "timeout" in timed_out.stderr

    listed = _json(ahop(api_url, token, "task", "list", "--template", "shout", "--json"))
    assert [item["status"] for item in listed["items"]] == ["timeout", "failed", "success"]  # newest first
    assert {item["template_id"] for item in listed["items"]} == {ids["shout"]}


def test_task_logs_show_and_cancel(api_url: str, alice: Caller, fleet: Fleet, tmp_path: Path) -> None:
    ids = import_shout(api_url, alice, tmp_path, ("shout",))
    fleet.start("w1")
    token = token_of(alice)

    created = _json(ahop(api_url, token, "task", "run", "shout", "-p", "who=later", "--no-follow", "--json"))
    assert (created["template_id"], created["params"]) == (ids["shout"], {"who": "later", "code": 0, "nap": 0})
    followed = ahop(api_url, token, "task", "logs", created["id"], "--follow")
    assert (followed.returncode, followed.stdout) == (0, "hello later\n")
    read = ahop(api_url, token, "task", "logs", created["id"])
    assert (read.returncode, read.stdout, read.stderr) == (0, "hello later\n", "to stderr\n")
    after_first = _json(ahop(api_url, token, "task", "logs", created["id"], "--after", "1", "--json"))
    assert [item["line"] for item in after_first["items"]] == ["to stderr"]
    shown = _json(ahop(api_url, token, "task", "show", created["id"], "--json"))
    assert (shown["status"], shown["worker"]) == ("success", "w1")

    sleeper = _json(
        ahop(api_url, token, "task", "run", "shout", "-p", "who=z", "-p", "nap=120", "--no-follow", "--json")
    )
    cancelled = ahop(api_url, token, "task", "cancel", sleeper["id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    ending = ahop(api_url, token, "task", "logs", sleeper["id"], "--follow")
    assert ending.returncode == 1, (ending.stdout, ending.stderr)
    assert f"task {sleeper['id']} cancelled" in ending.stderr
    again = ahop(api_url, token, "task", "cancel", sleeper["id"])
    assert (again.returncode, "409" in again.stderr) == (2, True)
    viewer = ahop(api_url, token_of(alice, Role.VIEWER), "task", "cancel", created["id"])
    assert (viewer.returncode, "403" in viewer.stderr) == (2, True)
    unknown = ahop(api_url, token, "task", "show", "00000000-0000-0000-0000-000000000000")
    assert (unknown.returncode, "404" in unknown.stderr) == (2, True)


def test_task_run_warns_when_no_live_worker_serves_the_pool_then_runs_once_one_starts(
    api_url: str,
    alice: Caller,
    fleet: Fleet,
    tmp_path: Path,
) -> None:
    import_shout(api_url, alice, tmp_path, ("shout_ansible",), pool="ansible")
    fleet.start("w-default")  # a live worker, but of another pool
    env = {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}
    env.update(AHOP_API_URL=api_url, AHOP_TOKEN=token_of(alice))
    stderr_path = tmp_path / "run.stderr"
    with stderr_path.open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "ahop", "task", "run", "shout_ansible", "-p", "who=pool"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60  # only catches a hang
            while "no live worker serves pool ansible" not in stderr_path.read_text():
                assert run.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, f"no warning on stderr: {stderr_path.read_text()!r}"
                time.sleep(0.05)
            fleet.start("w-ansible", AHOP_WORKER_POOL="ansible")  # the task was accepted: it runs now
            stdout, _ = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    said = stderr_path.read_text()
    assert run.returncode == 0, said
    assert stdout == "hello pool\n"
    warning = next(line for line in said.splitlines() if "warning" in line)
    assert warning.startswith("ahop: warning: no live worker serves pool ansible")
    assert said.index(warning) < said.index("to stderr")  # before the wait, not after the run

    served = ahop(api_url, token_of(alice), "task", "run", "shout_ansible", "-p", "who=again")
    assert served.returncode == 0, served.stderr
    assert "warning" not in served.stderr


def test_a_task_on_targets_names_its_hosts_and_shows_each_hosts_run_and_output(
    api_url: str, alice: Caller, origin: Path, tmp_path: Path, redis_url: str
) -> None:
    admin, token = token_of(alice, Role.ADMIN), token_of(alice)
    password, host_key = tmp_path / "password", key_pair(tmp_path, "host")
    password.write_text("pw-1\n")
    assert ahop(api_url, admin, "credential", "add", "ops", "--password-file", str(password)).returncode == 0
    for name, label in (("web-01", "web"), ("db-01", "db"), ("db-02", "db")):
        added = ahop(
            api_url,
            admin,
            *("host", "add", name, f"{name}.example.org", "--label", label, "--credential", "ops"),
            *("--host-key-file", str(host_key.public_file)),
        )
        assert added.returncode == 0, added.stderr
    repository = ahop(api_url, admin, "repo", "add", "ops", str(origin), "--json")
    assert repository.returncode == 0, repository.stderr
    repository_id = json.loads(repository.stdout)["id"]
    imported = ahop(api_url, admin, *template_import(repository_id, "fanout", "fanout"), "--execution", "targets")
    assert imported.returncode == 0, imported.stderr

    nowhere = ahop(api_url, token, "task", "run", "fanout", "-p", "days=1", "--no-follow")
    assert nowhere.returncode == 2, nowhere.stderr
    assert "hosts" in nowhere.stderr
    created = ahop(
        api_url,
        token,
        "task",
        "run",
        "fanout",
        "-p",
        "days=1",
        "--host",
        "web-01",
        "--label",
        "db",
        "--no-follow",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    assert [target["name"] for target in task["targets"]] == ["db-01", "db-02", "web-01"]

    redis = Redis.from_url(redis_url)
    try:
        now = datetime.now(UTC).isoformat()
        for event in (
            Event("started", task["id"], 1, "w1", now),
            Event("host_started", task["id"], 1, "w1", now, host="web-01"),
            Event("host_finished", task["id"], 1, "w1", now, status="unreachable", error="refused", host="db-02"),
        ):
            redis.xadd(EVENTS_STREAM, event.to_fields())  # type: ignore[arg-type]
        redis.xadd(log_stream(task["id"], 1), LogLine(1, "stdout", "from web", 1, "web-01").to_fields())  # type: ignore[arg-type]
        redis.xadd(log_stream(task["id"], 1), LogLine(2, "stdout", "from db", 1, "db-01").to_fields())  # type: ignore[arg-type]
    finally:
        redis.close()

    async def shown_runs() -> str | None:
        shown = ahop(api_url, token, "task", "show", task["id"][:8])
        assert shown.returncode == 0, shown.stderr
        return shown.stdout if "unreachable" in shown.stdout and "running" in shown.stdout else None

    table = asyncio.run(until(shown_runs, "the host runs to show"))
    assert "targets: db-01, db-02, web-01" in table
    rows = {line.split("\t")[0]: line.split("\t") for line in table.splitlines() if "\t" in line}
    assert (rows["db-01"][2], rows["db-02"][2], rows["web-01"][2]) == ("pending", "unreachable", "running")
    assert rows["db-02"][4] == "refused"
    as_json = json.loads(ahop(api_url, token, "task", "show", task["id"], "--json").stdout)
    assert [run["host"] for run in as_json["host_runs"]] == ["db-01", "db-02", "web-01"]

    web = ahop(api_url, token, "task", "logs", task["id"], "--host", "web-01")
    assert web.returncode == 0, web.stderr
    assert web.stdout == "from web\n"
