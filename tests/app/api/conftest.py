"""Fixtures of the API's input tests: a tenant's template to aim requests at, and what the tenant's rows are."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Caller
from tests.app.test_tasks import import_template
from tests.app.test_templates import Client
from tests.database import sql


async def rows(database_url: str, caller: Caller) -> dict[str, int]:
    """How many repositories, templates and tasks the tenant has."""
    counts = {}
    for table in ("git_repositories", "task_templates", "tasks"):
        found = await sql(database_url, f"SELECT count(*) FROM {table} WHERE tenant_id = $1::uuid", caller.tenant_id)
        counts[table] = int(found[0][0])
    return counts


def errors(response: Any) -> dict[str, str]:
    """A 422's fields and their messages."""
    assert response.status_code == 422, response.text
    return {item["field"]: item["message"] for item in response.json()["extra"]["errors"]}


@pytest.fixture(autouse=True)
async def no_unfinished_tasks_left(database_url: str) -> AsyncIterator[None]:
    """Later tests' control loops and workers must not pick up a task a test here started."""
    yield
    await sql(
        database_url,
        "UPDATE tasks SET status = 'cancelled', finished_at = now(), error = 'left by a test' "
        "WHERE status IN ('pending', 'queued', 'running')",
    )


@pytest.fixture
async def template(client: Client, alice: Caller, origin: Path) -> dict[str, Any]:
    """A template of alice's with a text and a multiselect parameter."""
    parameters: list[dict[str, Any]] = [
        {"name": "note", "type": "text"},
        {"name": "tags", "type": "multiselect", "options": ["a", "b"]},
    ]
    return await import_template(client, alice, origin, code="guarded", parameters=parameters)
