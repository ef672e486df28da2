"""`ahop task …` naming tasks as an operator reads them: whole ids off a terminal, unique prefixes accepted,
`task show` as key/value lines, and `task cancel` saying what became of the task."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import httpx

from app.db.models import Role
from tests.support.cli import ahop
from tests.support.fleet import Fleet
from tests.support.shout import import_shout
from tests.support.tenants import Caller, token_of
from tests.support.waiting import until


def _create(url: str, caller: Caller, template_id: int, nap: int = 0) -> str:
    body = {"template_id": template_id, "params": {"who": "x", "nap": nap}}
    created = httpx.post(f"{url}/api/v1/tasks", json=body, headers=caller[Role.OPERATOR])
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_tasks_are_named_by_a_unique_prefix_and_listed_whole(
    api_url: str,
    alice: Caller,
    bob: Caller,
    tmp_path: Path,
) -> None:
    ids = import_shout(api_url, alice, tmp_path, ("shout",))
    token = token_of(alice)
    # 17 tasks: two of them share a first hex digit, whatever the ids are.
    tasks = [_create(api_url, alice, ids["shout"]) for _ in range(17)]

    listed = ahop(api_url, token, "task", "list", "--page-size", "50")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t")[0] == "id"
    assert sorted(row.split("\t")[0] for row in rows) == sorted(tasks)  # whole ids, never cut

    by_first: defaultdict[str, list[str]] = defaultdict(list)
    for task_id in tasks:
        by_first[task_id[0]].append(task_id)
    shared, sharing = next((digit, found) for digit, found in by_first.items() if len(found) > 1)
    ambiguous = ahop(api_url, token, "task", "show", shared)
    assert ambiguous.returncode == 2, ambiguous.stderr
    assert f"task id prefix {shared!r} is ambiguous" in ambiguous.stderr
    assert all(task_id in ambiguous.stderr for task_id in sharing[:10])

    chosen = tasks[0]
    shown = ahop(api_url, token, "task", "show", chosen[:13])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"id: {chosen}" in lines
    assert "template_code: shout" in lines
    assert any(line.startswith("digest: sha256:") and len(line) == len("digest: sha256:") + 64 for line in lines)
    assert "params.who: x" in lines
    assert json.loads(ahop(api_url, token, "task", "show", chosen[:13], "--json").stdout)["id"] == chosen
    logs = ahop(api_url, token, "task", "logs", chosen[:13])
    assert (logs.returncode, logs.stdout) == (0, "")

    other_tenant = ahop(api_url, token_of(bob), "task", "show", chosen[:13])  # another tenant's tasks: not found
    assert (other_tenant.returncode, f"no task {chosen[:13]!r}" in other_tenant.stderr) == (2, True)

    cancelled = ahop(api_url, token, "task", "cancel", chosen[:8])
    assert (cancelled.returncode, cancelled.stdout) == (0, f"task {chosen} cancelled\n"), cancelled.stderr


def test_cancelling_a_running_task_says_cancelling(
    api_url: str,
    alice: Caller,
    fleet: Fleet,
    tmp_path: Path,
) -> None:
    ids = import_shout(api_url, alice, tmp_path, ("shout",))
    fleet.start("w1")
    token = token_of(alice)
    task_id = _create(api_url, alice, ids["shout"], nap=120)

    async def running() -> bool:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{api_url}/api/v1/tasks/{task_id}", headers=alice[Role.VIEWER])
        return bool(answer.json()["status"] == "running")

    asyncio.run(until(running, "the task to run", bound=60))
    cancelling = ahop(api_url, token, "task", "cancel", task_id)
    assert (cancelling.returncode, cancelling.stdout) == (0, f"task {task_id} cancelling\n"), cancelling.stderr
    ending = ahop(api_url, token, "task", "logs", task_id, "--follow")
    assert ending.returncode == 1, (ending.stdout, ending.stderr)
    assert f"task {task_id} cancelled" in ending.stderr
