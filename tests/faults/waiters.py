"""Tasks that wait for a test's word: each writes down its start, runs until the test releases it, writes down its
end. The ledger tells a task that ran once from one that ran twice; the stream shows results waiting in Redis."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from app.db.models import Role
from tests.support import waiting
from tests.support.api import Client
from tests.support.repositories import add_repository, commit_all
from tests.support.tenants import Caller
from worker.protocol import EVENTS_STREAM, Event

UNFINISHED = {"pending", "queued", "running"}

WAITER_SH = """#!/bin/bash
echo "start $AHOP_TASK_ID" >> "$AHOP_PARAM_LEDGER"
echo started
while [ ! -e "$AHOP_PARAM_GO" ]; do sleep 0.1; done
echo "end $AHOP_TASK_ID" >> "$AHOP_PARAM_LEDGER"
echo finished
"""


class Waiters:
    """The waiter template of one tenant, and the ledger and release file its tasks share."""

    def __init__(self, client: Client, caller: Caller, root: Path) -> None:
        self.client, self.caller, self.root = client, caller, root
        self.ledger, self.go = root / "ledger", root / "go"
        self.ledger.touch()
        self.template_id = 0

    async def import_template(self) -> None:
        repo = self.root / "waiter-origin"
        (repo / "waiter").mkdir(parents=True)
        (repo / "waiter" / "run.sh").write_text(WAITER_SH)
        (repo / "waiter" / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")  # unique content per test
        commit_all(repo, message="waiter")
        repository_id = await add_repository(self.client, self.caller, repo, name="waiter")
        body = {
            "name": "waiter",
            "code": "waiter",
            "repository_id": repository_id,
            "original_path": "waiter",
            "script_type": "shell",
            "entry_file": "run.sh",
            "timeout": 600,
            "parameters": [
                {"name": "ledger", "type": "text", "required": True},
                {"name": "go", "type": "text", "required": True},
            ],
        }
        response = await self.client.post("/api/v1/task-templates", json=body, headers=self.caller[Role.ADMIN])
        assert response.status_code == 201, response.text
        self.template_id = int(response.json()["id"])

    async def post(self) -> Any:
        """POST a task; the answer, whatever its status."""
        params = {"ledger": str(self.ledger), "go": str(self.go)}
        return await self.client.post(
            "/api/v1/tasks",
            json={"template_id": self.template_id, "params": params},
            headers=self.caller[Role.OPERATOR],
        )

    async def start(self, count: int) -> list[str]:
        """Create `count` tasks; their ids."""
        ids = []
        for _ in range(count):
            response = await self.post()
            assert response.status_code == 201, response.text
            ids.append(str(response.json()["id"]))
        return ids

    async def get(self, task_id: str) -> Any:
        return await self.client.get(f"/api/v1/tasks/{task_id}", headers=self.caller[Role.VIEWER])

    async def statuses(self, ids: list[str]) -> list[str]:
        found = []
        for task_id in ids:
            response = await self.get(task_id)
            assert response.status_code == 200, response.text
            found.append(str(response.json()["status"]))
        return found

    async def wait_one_running_others_queued(self, ids: list[str], bound: float) -> None:
        async def so() -> bool:
            return sorted(await self.statuses(ids)) == ["queued"] * (len(ids) - 1) + ["running"]

        await waiting.until(so, "one task running, the others queued", bound)

    async def wait_all_ended(self, ids: list[str], bound: float) -> list[dict[str, Any]]:
        """The tasks once none is unfinished; every answer on the way is 200 or 503 (a service away), never 500."""

        async def ended() -> list[dict[str, Any]] | None:
            tasks = []
            for task_id in ids:
                response = await self.get(task_id)
                assert response.status_code in (200, 503), response.text
                if response.status_code == 503:
                    return None
                tasks.append(dict(response.json()))
            return tasks if all(task["status"] not in UNFINISHED for task in tasks) else None

        result: list[dict[str, Any]] = await waiting.until(ended, "every task to end", bound)
        return result

    async def output(self, task_id: str) -> list[str]:
        response = await self.client.get(f"/api/v1/tasks/{task_id}/logs", headers=self.caller[Role.VIEWER])
        assert response.status_code == 200, response.text
        return [str(item["line"]) for item in response.json()["items"]]

    def release(self) -> None:
        """Every waiting task (and every later one) runs to its end."""
        self.go.touch()

    def runs(self) -> list[str]:
        """The ledger, sorted: one `start ID` and one `end ID` per run."""
        return sorted(self.ledger.read_text().splitlines())


def ran_once(ids: list[str]) -> list[str]:
    """What the ledger holds when each task ran exactly once, to its end."""
    return sorted([f"start {task_id}" for task_id in ids] + [f"end {task_id}" for task_id in ids])


async def finished_events(redis_url: str) -> set[str]:
    """The tasks whose `finished` event waits in the events stream, not recorded yet."""
    async with Redis.from_url(redis_url) as client:
        entries = await client.xrange(EVENTS_STREAM)
    events = [
        Event.from_fields({key.decode(): value.decode() for key, value in fields.items()}) for _, fields in entries
    ]
    return {str(event.task_id) for event in events if event.type == "finished"}


def control_log(records: list[Any]) -> list[str]:
    """What the control loop logged, from pytest's captured records."""
    return [record.getMessage() for record in records if record.name == "ahop.control"]


async def said_once(records: list[Any], outage: str, recovery: str, bound: float) -> None:
    """The control loop said once that a service went away and once that it is back. The recovery line comes when
    every job that failed has made a pass again, so it may follow the first new task by one interval: waited for."""

    async def recovery_said() -> bool:
        return any(recovery in line for line in control_log(records))

    await waiting.until(recovery_said, f"the control loop to say {recovery!r}", bound)
    said = control_log(records)
    assert (sum(outage in line for line in said), sum(recovery in line for line in said)) == (1, 1), said
