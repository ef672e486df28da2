"""Tasks through the API: starting one, waiting for the status it reaches, and reading its output."""

from __future__ import annotations

from typing import Any

from arq.jobs import Job
from redis.asyncio import Redis

from app.db.models import Role
from tests.support import waiting
from tests.support.api import Client
from tests.support.seal import WORKER_SECRET_KEYS
from tests.support.tenants import Caller
from worker.job_secrets import WorkerSeal
from worker.protocol import TaskJob, deserialize, job_id, queue_name

FINAL = {"success", "failed", "timeout", "cancelled", "lost"}
"""The statuses a task ends in."""


async def create_task(client: Client, caller: Caller, template_id: int, **fields: Any) -> dict[str, Any]:
    """Start a task of the template as an operator; the created task's JSON."""
    response = await client.post(
        "/api/v1/tasks", json={"template_id": template_id, **fields}, headers=caller[Role.OPERATOR]
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def show(client: Client, caller: Caller, task_id: str) -> dict[str, Any]:
    """The task as a viewer reads it."""
    response = await client.get(f"/api/v1/tasks/{task_id}", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_task(
    client: Client, caller: Caller, task_id: str, *, until: set[str] = FINAL, bound: float = 60
) -> dict[str, Any]:
    """The task once it has reached one of the statuses `until`."""

    async def reached() -> dict[str, Any] | None:
        task = await show(client, caller, task_id)
        return task if task["status"] in until else None

    result: dict[str, Any] = await waiting.until(reached, f"task {task_id} to reach {sorted(until)}", bound)
    return result


async def task_in(client: Client, caller: Caller, task_id: str, status: str, **expected: Any) -> dict[str, Any]:
    """The task once it is in `status` with the `expected` fields."""

    async def reached() -> dict[str, Any] | None:
        task = await show(client, caller, task_id)
        return task if task["status"] == status and expected.items() <= task.items() else None

    result: dict[str, Any] = await waiting.until(reached, f"task {task_id} to be {status} with {expected}")
    return result


async def queued_job(redis: Redis, task_id: str, attempt: int = 1, pool: str = "default") -> TaskJob | None:
    """The job of an attempt as a worker would read it from Redis, or None."""
    info = await Job(job_id(task_id, attempt), redis, _queue_name=queue_name(pool), _deserializer=deserialize).info()
    if info is None or info.score is None:
        return None
    return TaskJob.from_wire(info.args[0])


def sealed_params(job: TaskJob) -> dict[str, object]:
    """The password values a job carries sealed, opened as a worker of the test session opens them."""
    assert job.sealed is not None, "the job carries no sealed secrets"
    return WorkerSeal.from_setting(WORKER_SECRET_KEYS).open(job.sealed).params


async def log_lines(client: Client, caller: Caller, task_id: str) -> list[dict[str, Any]]:
    """The task's output lines as the API lists them."""
    response = await client.get(f"/api/v1/tasks/{task_id}/logs", headers=caller[Role.VIEWER])
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def output(lines: list[dict[str, Any]]) -> str:
    """The lines' text, one per line, as a terminal shows it."""
    return "\n".join(item["line"] for item in lines)
