"""A worker killed with SIGKILL takes its scripts with it: nothing of the attempt survives into the retry."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from litestar.testing import AsyncTestClient

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support import waiting
from tests.support.api import Client
from tests.support.fleet import Fleet, alive
from tests.support.repositories import add_repository, commit_all
from tests.support.tenants import Caller

BOUND = 60.0
"""Every wait's bound: it only catches hangs."""

# Attempt 1 writes down every process of its own (itself, its supervisor, a child in the background and one that
# left for a session of its own), then waits. A later attempt first reports each of those that is still alive.
STUBBORN_SH = """#!/bin/bash
ledger="$AHOP_PARAM_LEDGER"
if [ "$AHOP_TASK_ATTEMPT" -gt 1 ]; then
  while read -r attempt pid; do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
    if [ "$attempt" -lt "$AHOP_TASK_ATTEMPT" ] && [ -n "$state" ] && [ "$state" != Z ]; then
      echo "survivor $pid"
    fi
  done < "$ledger"
  echo checked
  exit 0
fi
echo "$AHOP_TASK_ATTEMPT $$" >> "$ledger"
echo "$AHOP_TASK_ATTEMPT $PPID" >> "$ledger"
setsid sleep 300 &
echo "$AHOP_TASK_ATTEMPT $!" >> "$ledger"
sleep 300 &
echo "$AHOP_TASK_ATTEMPT $!" >> "$ledger"
echo started
wait
"""


@pytest.fixture
async def server(api_settings: AppSettings) -> AsyncIterator[Client]:
    settings = api_settings.model_copy(update={"control_interval": 0.2, "heartbeat_timeout": 2.0, "lost_grace": 1.0})
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def stubborn_template(client: Client, caller: Caller, root: Path) -> int:
    repo = root / "stubborn-origin"
    (repo / "stubborn").mkdir(parents=True)
    (repo / "stubborn" / "run.sh").write_text(STUBBORN_SH)
    (repo / "stubborn" / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")  # unique content per test
    commit_all(repo, message="stubborn")
    repository_id = await add_repository(client, caller, repo, name="stubborn")
    body = {
        "name": "stubborn",
        "code": "stubborn",
        "repository_id": repository_id,
        "original_path": "stubborn",
        "script_type": "shell",
        "entry_file": "run.sh",
        "timeout": 600,
        "max_attempts": 2,
        "retry_on": ["lost"],
        "parameters": [{"name": "ledger", "type": "text", "required": True}],
    }
    response = await client.post("/api/v1/task-templates", json=body, headers=caller[Role.ADMIN])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def log_lines(client: Client, caller: Caller, task_id: str) -> list[str]:
    response = await client.get(f"/api/v1/tasks/{task_id}/logs", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return [str(item["line"]) for item in response.json()["items"]]


async def show(client: Client, caller: Caller, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/{task_id}", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return dict(response.json())


def attempt_processes(ledger: Path, attempt: int) -> list[psutil.Process]:
    """The processes the attempt wrote down, as psutil handles (which tell a reused pid from the original)."""
    processes = []
    for line in ledger.read_text().splitlines():
        number, pid = line.split()
        if int(number) == attempt:
            processes.append(psutil.Process(int(pid)))
    return processes


async def test_a_sigkilled_workers_scripts_die_with_it_before_the_retry_starts(
    server: Client, alice: Caller, fleet: Fleet, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    ledger.touch()
    template_id = await stubborn_template(server, alice, tmp_path)
    doomed = fleet.start("doomed")
    response = await server.post(
        "/api/v1/tasks",
        json={"template_id": template_id, "params": {"ledger": str(ledger)}},
        headers=alice[Role.OPERATOR],
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]

    async def started() -> bool:
        return "started" in await log_lines(server, alice, task_id)

    await waiting.until(started, "attempt 1 to start", BOUND)
    first = attempt_processes(ledger, 1)
    assert len(first) == 4, ledger.read_text()
    assert all(alive(process) for process in first), ledger.read_text()
    fleet.start("heir")  # takes the retry as soon as the server sends it
    try:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.popen.wait(BOUND)

        async def retried() -> dict[str, Any] | None:
            task = await show(server, alice, task_id)
            return task if task["status"] == "success" else None

        done = await waiting.until(retried, "attempt 2 to succeed", BOUND)
        assert (done["attempt"], done["worker"]) == (2, "heir"), done
        lines = await log_lines(server, alice, task_id)
        assert "checked" in lines, lines
        assert [line for line in lines if line.startswith("survivor")] == []  # none when attempt 2 started
        assert not any(alive(process) for process in first)
    finally:
        for process in first:  # should any have survived, stop exactly it
            if alive(process):
                process.kill()
