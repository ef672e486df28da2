"""Import → task → worker → result, with real worker processes beside the API and its control loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis as AsyncRedis

from ahop.task_commands import parse_events
from app.db.models import Role
from app.devstack.redis import RedisServer
from app.main import create_app
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.support import waiting
from tests.support.api import Client
from tests.support.database import sql
from tests.support.fleet import Fleet
from tests.support.repositories import add_repository, commit_all
from tests.support.s3 import s3_client
from tests.support.tasks import create_task, log_lines, output, wait_task
from tests.support.tenants import Caller
from worker.protocol import queue_name

SHOW_SH = """#!/bin/bash
echo "args: $*"
echo "env: name=$AHOP_PARAM_NAME count=$AHOP_PARAM_COUNT colors=$AHOP_PARAM_COLORS loud=$AHOP_PARAM_LOUD"
echo "file: $(cat "$AHOP_PARAMS_FILE")"
echo "token: $AHOP_PARAM_TOKEN"
echo "token length: ${#AHOP_PARAM_TOKEN}"
echo "to stderr" >&2
exit "$AHOP_PARAM_CODE"
"""
SHOW_PARAMS = [
    {"name": "name", "type": "text", "required": True},
    {"name": "count", "type": "integer", "default": 2},
    {"name": "colors", "type": "multiselect", "options": ["red", "green", "blue"]},
    {"name": "loud", "type": "boolean", "default": False},
    {"name": "token", "type": "password"},
    {"name": "code", "type": "integer", "default": 0},
]
MAIN_PY = """import json, os, sys
print("argv:", sys.argv[1:])
print("file:", json.load(open(os.environ["AHOP_PARAMS_FILE"])))
"""
SITE_YML = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg: "greeting={{ greeting }}"
"""
SLEEPY_SH = """#!/bin/bash
echo "pid=$$"
echo started
[ -n "$AHOP_PARAM_MARKER" ] && touch "$AHOP_PARAM_MARKER"
sleep 300
"""
ENVDUMP_SH = """#!/bin/bash
echo "uid=$(id -u)"
env
pid=$PPID
while [ "$pid" -gt 1 ]; do
  echo "reading /proc/$pid/environ"
  tr '\\0' '\\n' < /proc/$pid/environ 2>&1
  pid=$(awk '{print $4}' /proc/$pid/stat)
done
"""

QUICK_SH = """#!/bin/bash
echo "attempt $AHOP_TASK_ATTEMPT"
"""
FLAKY_SH = """#!/bin/bash
for i in $(seq 1 "$AHOP_PARAM_LINES"); do echo "attempt $AHOP_TASK_ATTEMPT line $i"; done
[ "$AHOP_TASK_ATTEMPT" -ge "$AHOP_PARAM_PASS_ON" ]
"""


def scripts_repo(root: Path) -> Path:
    """A repository with one template of each kind; unique content, since the tree cache is session-wide."""
    repo = root / "scripts-origin"
    files = {
        "show/run.sh": SHOW_SH,
        "pyshow/main.py": MAIN_PY,
        "hello/site.yml": SITE_YML,
        "sleepy/run.sh": SLEEPY_SH,
        "envdump/run.sh": ENVDUMP_SH,
        "quick/run.sh": QUICK_SH,
        "flaky/run.sh": FLAKY_SH,
    }
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        (path.parent / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")
    commit_all(repo, message="scripts")
    return repo


TEMPLATES: dict[str, dict[str, Any]] = {
    "show": {"script_type": "shell", "entry_file": "run.sh", "parameters": SHOW_PARAMS},
    "pyshow": {
        "script_type": "python",
        "entry_file": "main.py",
        "parameters": [{"name": "who", "type": "text"}, {"name": "n", "type": "integer"}],
    },
    "hello": {
        "script_type": "ansible",
        "entry_file": "site.yml",
        "parameters": [{"name": "greeting", "type": "text"}],
        "execution": "worker",  # a localhost playbook: it runs on the worker, not on targets
    },
    "sleepy": {"script_type": "shell", "entry_file": "run.sh", "parameters": [{"name": "marker", "type": "text"}]},
    "envdump": {"script_type": "shell", "entry_file": "run.sh", "parameters": []},
    "quick": {"script_type": "shell", "entry_file": "run.sh", "parameters": []},
    "flaky": {
        "script_type": "shell",
        "entry_file": "run.sh",
        "parameters": [{"name": "lines", "type": "integer", "default": 3}, {"name": "pass_on", "type": "integer"}],
        "max_attempts": 3,
        "retry_on": ["failed"],
    },
}


LOST_SOON = {"heartbeat_timeout": 2.0, "lost_grace": 1.0}
"""For a test that kills a worker and waits for its task to be lost. Only there: with them, a loaded machine's live
worker whose `finished` event waits behind a backlog for more than a second looks dead, and its task is lost."""


@pytest.fixture
def e2e_settings(api_settings: AppSettings, request: pytest.FixtureRequest) -> AppSettings:
    """The control loop at a test's pace; the default heartbeat settings unless a test asks for others."""
    return api_settings.model_copy(update={"control_interval": 0.2, **getattr(request, "param", {})})


@pytest.fixture
async def server(e2e_settings: AppSettings) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(e2e_settings)) as test_client:
        yield test_client


class Templates:
    """Imports the scripts repository's templates on demand, one per code."""

    def __init__(self, client: Client, caller: Caller, repo: Path) -> None:
        self.client, self.caller, self.repo = client, caller, repo
        self.repository_id: int | None = None
        self.ids: dict[str, int] = {}

    async def id(self, code: str, **fields: Any) -> int:
        if code not in self.ids:
            if self.repository_id is None:
                self.repository_id = await add_repository(self.client, self.caller, self.repo, name="scripts")
            body = {
                "name": code,
                "code": code,
                "repository_id": self.repository_id,
                "original_path": code,
                "timeout": 600,
                **TEMPLATES[code],
                **fields,
            }
            response = await self.client.post("/api/v1/task-templates", json=body, headers=self.caller[Role.ADMIN])
            assert response.status_code == 201, response.text
            self.ids[code] = int(response.json()["id"])
        return self.ids[code]

    async def digest(self, code: str) -> str:
        response = await self.client.get(
            f"/api/v1/task-templates/{await self.id(code)}", headers=self.caller[Role.VIEWER]
        )
        return str(response.json()["artifact"]["digest"]).removeprefix("sha256:")


@pytest.fixture
def templates(server: Client, alice: Caller, tmp_path: Path) -> Templates:
    return Templates(server, alice, scripts_repo(tmp_path))


async def wait_log(client: Client, caller: Caller, task_id: str, text: str, bound: float = 60) -> list[str]:
    """The task's output lines once one of them contains `text`."""

    async def written() -> list[str] | None:
        lines = [item["line"] for item in await log_lines(client, caller, task_id)]
        return lines if any(text in line for line in lines) else None

    result: list[str] = await waiting.until(written, f"{text!r} in the log of {task_id}", bound)
    return result


async def test_a_shell_template_runs_with_every_parameter_channel_and_masked_password(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start("w1")
    pwned = tmp_path / "pwned"
    hostile = f"it's $(touch {pwned}) ok"
    task = await create_task(
        server,
        alice,
        await templates.id("show"),
        params={"name": hostile, "colors": "red,blue", "loud": "yes", "token": "hunter2-secret"},
    )
    assert str(uuid.UUID(task["id"])) == task["id"]
    assert task["params"]["token"] == "********"
    done = await wait_task(server, alice, task["id"])
    assert done["status"] == "success", done
    assert done["exit_code"] == 0
    assert done["worker"] == "w1"
    lines = await log_lines(server, alice, task["id"])
    text = output(lines)
    assert f"--name {hostile}" in text  # one argument, never run through a shell
    assert "--count 2 --colors red,blue --loud true" in text
    assert f"env: name={hostile} count=2 colors=red,blue loud=true" in text
    assert '"count": 2' in text or '"count":2' in text
    assert "hunter2-secret" not in text
    assert "token: ********" in text
    assert "token length: 14" in text  # the script got the value itself, opened from the job's seal
    assert {"stream": "stderr", "line": "to stderr"}.items() <= next(
        item for item in lines if item["line"] == "to stderr"
    ).items()
    assert [item["seq"] for item in lines] == list(range(1, len(lines) + 1))
    assert not await asyncio.to_thread(pwned.exists)
    shown = await server.get(f"/api/v1/tasks/{task['id']}", headers=alice[Role.VIEWER])
    assert "hunter2-secret" not in shown.text


async def test_a_worker_without_the_servers_seal_keys_runs_no_script_and_says_which_setting(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, tmp_path: Path
) -> None:
    other = Fleet({**fleet.env, "AHOP_WORKER_SECRET_KEYS": Fernet.generate_key().decode()}, tmp_path / "other-logs")
    try:
        other.start("w-other")
        task = await create_task(
            server, alice, await templates.id("show"), params={"name": "x", "token": "hunter2-secret"}
        )
        done = await wait_task(server, alice, task["id"])
    finally:
        other.stop_all()
    assert (done["status"], done["exit_code"]) == ("failed", None)
    assert "AHOP_WORKER_SECRET_KEYS" in done["error"]
    assert await log_lines(server, alice, task["id"]) == []  # the script never ran


async def test_a_failing_script_reports_its_exit_code(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet
) -> None:
    fleet.start("w1")
    task = await create_task(server, alice, await templates.id("show"), params={"name": "x", "code": "3"})
    done = await wait_task(server, alice, task["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 3)


async def test_python_and_ansible_templates_get_their_parameters(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet
) -> None:
    fleet.start("w1")
    python_task = await create_task(server, alice, await templates.id("pyshow"), params={"who": "ops", "n": "7"})
    ansible_task = await create_task(server, alice, await templates.id("hello"), variables={"greeting": "hi there"})
    python_done = await wait_task(server, alice, python_task["id"])
    ansible_done = await wait_task(server, alice, ansible_task["id"], bound=120)
    assert python_done["status"] == "success", python_done
    python_out = output(await log_lines(server, alice, python_task["id"]))
    assert "argv: ['--who', 'ops', '--n', '7']" in python_out
    assert "file: {'who': 'ops', 'n': 7}" in python_out
    ansible_out = output(await log_lines(server, alice, ansible_task["id"]))
    assert ansible_done["status"] == "success", (ansible_done, ansible_out)
    assert "greeting=hi there" in ansible_out


async def test_timeout_stops_the_script(server: Client, alice: Caller, templates: Templates, fleet: Fleet) -> None:
    fleet.start("w1")
    # The timeout strikes a script that has started (and said so), however slowly a loaded machine starts it.
    task = await create_task(server, alice, await templates.id("sleepy"), timeout=5)
    done = await wait_task(server, alice, task["id"])
    assert done["status"] == "timeout", done
    assert "started" in output(await log_lines(server, alice, task["id"]))


async def test_cancel_a_running_task_and_a_queued_one(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start("w1")
    running = await create_task(server, alice, await templates.id("sleepy"))
    await wait_log(server, alice, running["id"], "started")
    response = await server.post(f"/api/v1/tasks/{running['id']}/cancel", headers=alice[Role.OPERATOR])
    assert response.status_code in (200, 202), response.text
    done = await wait_task(server, alice, running["id"], bound=30)
    assert done["status"] == "cancelled", done

    # A pool no worker serves yet: the task stays queued, is cancelled, and never starts when a worker comes.
    template_id = await templates.id("sleepy")
    put = await server.put(f"/api/v1/task-templates/{template_id}", json={"pool": "night"}, headers=alice[Role.ADMIN])
    assert put.status_code == 200, put.text
    marker = tmp_path / "queued-task-ran"
    queued = await create_task(server, alice, template_id, params={"marker": str(marker)})
    assert (await wait_task(server, alice, queued["id"], until={"queued"}))["status"] == "queued"
    response = await server.post(f"/api/v1/tasks/{queued['id']}/cancel", headers=alice[Role.OPERATOR])
    assert response.status_code in (200, 202), response.text
    assert (await wait_task(server, alice, queued["id"]))["status"] == "cancelled"
    fleet.start("night-1", AHOP_WORKER_POOL="night")
    await wait_queue_empty(fleet, "night")
    assert not marker.exists()
    assert (await wait_task(server, alice, queued["id"]))["status"] == "cancelled"


async def wait_queue_empty(fleet: Fleet, pool: str, bound: float = 30) -> None:
    client = AsyncRedis.from_url(fleet.env["AHOP_REDIS_URL"])
    try:

        async def consumed() -> bool:
            return int(await client.zcard(queue_name(pool))) == 0

        await waiting.until(consumed, f"queue {pool} to be consumed", bound)
    finally:
        await client.aclose()


@pytest.mark.parametrize("e2e_settings", [LOST_SOON], indirect=True, ids=["lost-soon"])
async def test_a_worker_killed_mid_task_leaves_it_lost(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet
) -> None:
    worker = fleet.start("doomed")
    task = await create_task(server, alice, await templates.id("sleepy"))
    lines = await wait_log(server, alice, task["id"], "started")
    script_pid = int(next(line for line in lines if line.startswith("pid=")).removeprefix("pid="))
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.popen.wait(10)
        done = await wait_task(server, alice, task["id"], bound=60)
        assert done["status"] == "lost", done
        assert "doomed" in (done["error"] or "")
    finally:
        # Should the script have outlived its worker, stop exactly it.
        with_suppressed_missing(lambda: os.killpg(script_pid, signal.SIGKILL))


def with_suppressed_missing(action: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        action()


async def test_two_workers_on_one_host_download_a_new_digest_once_and_keep_it(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, e2e_settings: AppSettings
) -> None:
    fleet.start("a", AHOP_WORKER_MAX_JOBS="1")
    fleet.start("b", AHOP_WORKER_MAX_JOBS="1")
    template_id = await templates.id("show")
    first, second = [await create_task(server, alice, template_id, params={"name": f"n{i}"}) for i in range(2)]
    done = [await wait_task(server, alice, task["id"]) for task in (first, second)]
    assert [task["status"] for task in done] == ["success", "success"]
    ended = max(datetime.fromisoformat(task["finished_at"]) for task in done)
    beats = [
        fleet.wait_heartbeat(name, lambda beat: datetime.fromisoformat(beat["at"]) > ended, what="a later heartbeat")
        for name in ("a", "b")
    ]  # heartbeats sent after both tasks ended count every download they made
    assert sum(beat["downloads"] for beat in beats) == 1

    # The blob leaves S3: the host's store still runs it.
    digest = await templates.digest("show")
    s3_client(e2e_settings.s3_location()).delete_object(Bucket=e2e_settings.s3_bucket, Key=blob_key(Digest(digest)))
    again = await create_task(server, alice, template_id, params={"name": "after delete"})
    assert (await wait_task(server, alice, again["id"]))["status"] == "success"


async def test_a_corrupt_blob_fails_the_task_before_any_script_runs(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, e2e_settings: AppSettings
) -> None:
    template_id = await templates.id("show")
    digest = await templates.digest("show")
    s3 = s3_client(e2e_settings.s3_location())
    key = blob_key(Digest(digest))
    original = s3.get_object(Bucket=e2e_settings.s3_bucket, Key=key)["Body"].read()
    tampered = original[:-8] + bytes(8)
    s3.put_object(Bucket=e2e_settings.s3_bucket, Key=key, Body=tampered)
    fleet.start("w1")
    task = await create_task(server, alice, template_id, params={"name": "x"})
    done = await wait_task(server, alice, task["id"])
    assert done["status"] == "failed", done
    assert done["exit_code"] is None
    assert digest in done["error"]
    assert "did not run" in done["error"]
    assert await log_lines(server, alice, task["id"]) == []


async def test_verify_removes_a_tampered_store_entry_and_the_next_run_fetches_again(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, worker_env: dict[str, str]
) -> None:
    fleet.start("w1")
    template_id = await templates.id("show")
    first = await create_task(server, alice, template_id, params={"name": "one"})
    assert (await wait_task(server, alice, first["id"]))["status"] == "success"
    digest = await templates.digest("show")
    entry = Path(worker_env["AHOP_WORKER_ROOT"]) / "store" / "sha256" / digest
    script = entry / "run.sh"
    entry.chmod(0o755)
    script.chmod(0o644)
    script.write_text("#!/bin/bash\necho tampered\n")

    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ahop", "worker", "verify"],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert digest in verify.stdout
    assert not entry.exists()

    second = await create_task(server, alice, template_id, params={"name": "two"})
    assert (await wait_task(server, alice, second["id"]))["status"] == "success"
    assert "tampered" not in output(await log_lines(server, alice, second["id"]))
    beat = fleet.wait_heartbeat("w1", lambda beat: beat["downloads"] == 2, what="a second download")
    assert beat["downloads"] == 2


async def test_scripts_find_no_worker_secrets(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, worker_env: dict[str, str]
) -> None:
    secret = worker_env["AHOP_S3_SECRET_ACCESS_KEY"]
    worker = fleet.start("w1")
    worker_environ = (await asyncio.to_thread(Path(f"/proc/{worker.pid}/environ").read_bytes)).split(b"\0")
    assert not any(item.startswith(b"AHOP_DATABASE_URL=") for item in worker_environ)
    task = await create_task(server, alice, await templates.id("envdump"))
    assert (await wait_task(server, alice, task["id"]))["status"] == "success"
    text = output(await log_lines(server, alice, task["id"]))
    own_env = text.split("reading /proc/")[0]
    assert "uid=" in own_env
    assert secret not in own_env
    assert "AHOP_S3" not in own_env
    assert "AHOP_REDIS" not in own_env


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A worker root that another user can traverse (pytest's own temporary directories are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ahop-runas-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


async def test_with_a_run_as_user_scripts_cannot_read_credentials_through_proc(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, worker_env: dict[str, str], shared_root: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: a run-as user can only be set by a root worker")
    secret = worker_env["AHOP_S3_SECRET_ACCESS_KEY"]
    fleet.start("guarded", AHOP_WORKER_RUN_AS="nobody", AHOP_WORKER_ROOT=str(shared_root))
    task = await create_task(server, alice, await templates.id("envdump"))
    done = await wait_task(server, alice, task["id"])
    assert done["status"] == "success", done
    text = output(await log_lines(server, alice, task["id"]))
    assert "uid=65534" in text
    assert f"reading /proc/{fleet.started['guarded'].pid}/environ" in text
    assert secret not in text


async def test_prefetch_puts_the_digest_on_every_live_worker_before_any_task(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start("p1", AHOP_WORKER_ROOT=str(tmp_path / "root-1"))
    fleet.start("p2", AHOP_WORKER_ROOT=str(tmp_path / "root-2"))
    template_id = await templates.id("show")
    digest = await templates.digest("show")
    response = await server.post(f"/api/v1/task-templates/{template_id}/prefetch", headers=alice[Role.OPERATOR])
    assert response.status_code == 202, response.text
    assert sorted(response.json()["workers"]) == ["p1", "p2"]
    for name in ("p1", "p2"):
        fleet.wait_heartbeat(name, lambda beat: beat["downloads"] == 1, what="the prefetch download")
        assert (tmp_path / f"root-{name[1]}" / "store" / "sha256" / digest / "run.sh").is_file()

    async def both_shown() -> bool:
        shown = (await server.get(f"/api/v1/task-templates/{template_id}", headers=alice[Role.VIEWER])).json()
        return sorted(worker["id"] for worker in shown["workers"]) == ["p1", "p2"]

    await waiting.until(both_shown, "the template to show both workers as holders")
    task = await create_task(server, alice, template_id, params={"name": "warm"})
    assert (await wait_task(server, alice, task["id"]))["status"] == "success"
    beats = [fleet.heartbeat(name) for name in ("p1", "p2")]
    assert [beat["downloads"] for beat in beats if beat] == [1, 1]


async def test_a_task_created_while_redis_is_down_runs_when_it_returns(
    e2e_settings: AppSettings, alice: Caller, worker_env: dict[str, str], tmp_path: Path
) -> None:
    redis_server = RedisServer.start(tmp_path / "own-redis", durable=False)
    port = redis_server.port
    fleet = Fleet({**worker_env, "AHOP_REDIS_URL": redis_server.url()}, tmp_path / "own-logs")
    settings = e2e_settings.model_copy(update={"redis_url": redis_server.url()})
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            templates = Templates(client, alice, scripts_repo(tmp_path))
            template_id = await templates.id("show")
            redis_server.stop()
            task = await create_task(client, alice, template_id, params={"name": "patient"})
            assert task["status"] == "pending"
            redis_server = RedisServer.launch(tmp_path / "own-redis", durable=False, port=port)
            redis_server.wait_ready()
            fleet.start("w1")
            done = await wait_task(client, alice, task["id"])
            assert done["status"] == "success", done
    finally:
        fleet.stop_all()
        redis_server.stop()


FOLLOWED_TASKS = 25
LINES = 30
ATTEMPTS = 3
QUICK_TASKS = 150


async def follow(client: Client, caller: Caller, task_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The events of a task's followed log, from its first line to its end: (name, id, data)."""
    response = await client.get(f"/api/v1/tasks/{task_id}/logs?follow=true", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return [(event.name, event.id, json.loads(event.data)) for event in parse_events(response.text.splitlines())]


async def test_the_live_log_of_a_retried_task_shows_each_line_once_tagged_with_its_attempt(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet
) -> None:
    template_id = await templates.id("flaky")
    fleet.start("w1")
    fleet.start("w2")
    expected = [
        (attempt, (attempt - 1) * LINES + number, f"attempt {attempt} line {number}")
        for attempt in range(1, ATTEMPTS + 1)
        for number in range(1, LINES + 1)
    ]
    for repetition in range(FOLLOWED_TASKS):
        task = await create_task(server, alice, template_id, params={"lines": LINES, "pass_on": ATTEMPTS})
        events = await follow(server, alice, task["id"])
        where = f"repetition {repetition}, task {task['id']}"
        assert (events[-1][0], events[-1][2]) == ("end", {"status": "success", "exit_code": 0, "error": None}), where
        lines = [data for name, _, data in events if name == "message"]
        assert [(line["seq"], line["line"]) for line in lines] == [(seq, text) for _, seq, text in expected], where
        assert [line["attempt"] for line in lines] == [attempt for attempt, _, _ in expected], where
        assert [event_id for name, event_id, _ in events if name == "message"] == [str(seq) for _, seq, _ in expected]

        stored = await server.get(f"/api/v1/tasks/{task['id']}/logs", headers=alice[Role.VIEWER])
        assert [(line["attempt"], line["seq"], line["line"]) for line in stored.json()["items"]] == expected, where


async def test_no_task_starts_before_it_was_queued_or_ends_before_it_started(
    server: Client, alice: Caller, templates: Templates, fleet: Fleet, database_url: str
) -> None:
    template_id = await templates.id("quick")
    fleet.start("w1")
    fleet.start("w2")
    ids = [uuid.UUID((await create_task(server, alice, template_id))["id"]) for _ in range(QUICK_TASKS)]

    async def all_finished() -> list[Any] | None:
        rows = await sql(database_url, "SELECT * FROM tasks WHERE id = ANY($1) AND finished_at IS NOT NULL", ids)
        return rows if len(rows) == len(ids) else None

    rows = await waiting.until(all_finished, f"{QUICK_TASKS} quick tasks to finish", bound=600)
    assert {row["status"] for row in rows} == {"success"}
    out_of_order = [
        {key: row[key] for key in ("id", "created_at", "queued_at", "started_at", "finished_at")}
        for row in rows
        if row["queued_at"] is None
        or not row["created_at"] <= row["queued_at"] <= row["started_at"] <= row["finished_at"]
    ]
    assert out_of_order == []
