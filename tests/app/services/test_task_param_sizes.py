"""Parameter values too large for a script are refused when the task is created, and the largest ones allowed run.

A value reaches a shell or python script as one `--name value` argument and one `AHOP_PARAM_<NAME>` environment
variable. Before, a value over Linux's 128 KiB limit for one such string was accepted (201) and the launch then
failed with "Argument list too long"; now it is refused with a 422 naming the field and the limit, and a task at
both limits (96 KiB per value, 512 KiB in all) starts on a real worker that receives every byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.db.models import Role
from app.main import create_app
from app.services.task_params import MAX_TOTAL_BYTES, MAX_VALUE_BYTES
from app.settings import AppSettings
from tests.support.api import Client, errors
from tests.support.database import sql
from tests.support.fleet import Fleet
from tests.support.repositories import add_repository, commit_all
from tests.support.tasks import create_task, log_lines, output, wait_task
from tests.support.tenants import Caller

NAMES = "abcdef"
SIZES_SH = """#!/bin/bash
while [ $# -gt 0 ]; do echo "argument $1 has ${#2} bytes"; shift 2; done
for name in A B C D E F; do
  variable="AHOP_PARAM_$name"; value="${!variable}"; echo "$variable has ${#value} bytes"
done
"""


@pytest.fixture
async def server(api_settings: AppSettings) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(api_settings.model_copy(update={"control_interval": 0.2}))) as client:
        yield client


@pytest.fixture
async def sizes_template(server: Client, alice: Caller, tmp_path: Path) -> int:
    """A shell template of six text parameters that prints the size of each as it receives them."""
    repo = tmp_path / "sizes-origin"
    (repo / "sizes").mkdir(parents=True)
    (repo / "sizes" / "run.sh").write_text(SIZES_SH + f"# {tmp_path.name}\n")  # unique content per test
    commit_all(repo, message="sizes")
    repository_id = await add_repository(server, alice, repo, name="sizes")
    parameters = [{"name": name, "type": "text"} for name in NAMES]
    body = {
        "name": "sizes",
        "code": "sizes",
        "script_type": "shell",
        "entry_file": "run.sh",
        "original_path": "sizes",
        "repository_id": repository_id,
        "parameters": parameters,
    }
    response = await server.post("/api/v1/task-templates", json=body, headers=alice[Role.ADMIN])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def tasks_of(database_url: str, caller: Caller) -> int:
    found = await sql(database_url, "SELECT count(*) FROM tasks WHERE tenant_id = $1::uuid", caller.tenant_id)
    return int(found[0][0])


async def test_values_too_large_for_a_script_are_refused_at_creation_and_the_largest_allowed_reach_it(
    server: Client, alice: Caller, sizes_template: int, database_url: str, fleet: Fleet
) -> None:
    before = await tasks_of(database_url, alice)
    answer = await server.post(
        "/api/v1/tasks",
        json={"template_id": sizes_template, "params": {"a": "x" * 200_000}},  # over Linux's 128 KiB per string
        headers=alice[Role.OPERATOR],
    )
    message = errors(answer)["params.a"]
    assert "200000 bytes" in message
    assert f"at most {MAX_VALUE_BYTES} bytes (96 KiB)" in message
    together: dict[str, Any] = {name: "x" * (MAX_VALUE_BYTES - 1) for name in NAMES}
    answer = await server.post(
        "/api/v1/tasks", json={"template_id": sizes_template, "params": together}, headers=alice[Role.OPERATOR]
    )
    assert f"at most {MAX_TOTAL_BYTES} bytes (512 KiB)" in errors(answer)["params"]
    assert await tasks_of(database_url, alice) == before

    fleet.start("w1")
    last = MAX_TOTAL_BYTES - 5 * MAX_VALUE_BYTES
    sizes = {name: MAX_VALUE_BYTES for name in NAMES[:5]} | {NAMES[5]: last}
    task = await create_task(server, alice, sizes_template, params={name: "x" * size for name, size in sizes.items()})
    done = await wait_task(server, alice, task["id"])
    text = output(await log_lines(server, alice, task["id"]))
    assert done["status"] == "success", (done, text)
    for name, size in sizes.items():
        assert f"argument --{name} has {size} bytes" in text
        assert f"AHOP_PARAM_{name.upper()} has {size} bytes" in text
