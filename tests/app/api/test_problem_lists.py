"""A 422 with thousands of problems lists the first 100 and says how many there were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.templates import body, import_template
from tests.support.tenants import Caller


async def test_thousands_of_bad_task_parameters_list_the_first_100_and_the_count(
    client: Client, alice: Caller, origin: Path
) -> None:
    template = await import_template(client, alice, origin)
    params = {f"unknown_{index}": index for index in range(1500)}

    response = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": params}, headers=alice[Role.OPERATOR]
    )

    assert response.status_code == 422
    answer = response.json()
    assert answer["detail"] == "1,501 problems; the first 100 are listed"  # and the required `days` is missing
    assert answer["extra"]["count"] == 1501
    problems = answer["extra"]["errors"]
    assert len(problems) == 100
    assert [problem["field"] for problem in problems[:3]] == ["params.days", "params.unknown_0", "params.unknown_1"]
    assert "unknown parameter" in problems[1]["message"]
    assert len(response.content) < 50_000  # not 1,500 problems twice over (listed and in the detail)
    listed = await client.get(f"/api/v1/tasks?template_id={template['id']}", headers=alice[Role.VIEWER])
    assert listed.json()["total"] == 0


async def test_a_big_body_with_hundreds_of_bad_fields_lists_the_first_100_and_the_count(
    client: Client, alice: Caller
) -> None:
    parameters: list[dict[str, Any]] = [{"name": f"{index} bad", "type": "nope"} for index in range(150)]

    response = await client.post(
        "/api/v1/task-templates", json=body(1, parameters=parameters), headers=alice[Role.ADMIN]
    )

    assert response.status_code == 422
    answer = response.json()
    assert answer["extra"]["count"] == 300  # each parameter: a bad name and a bad type
    assert answer["detail"] == "300 problems; the first 100 are listed"
    problems = answer["extra"]["errors"]
    assert len(problems) == 100
    assert {problem["field"] for problem in problems[:2]} == {"parameters.0.name", "parameters.0.type"}


async def test_a_few_problems_are_all_listed_with_their_count(client: Client, alice: Caller, origin: Path) -> None:
    template = await import_template(client, alice, origin)

    response = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"a": 1, "b": 2}}, headers=alice[Role.OPERATOR]
    )

    assert response.status_code == 422
    answer = response.json()
    assert answer["detail"].startswith("invalid task parameters")
    assert answer["extra"]["count"] == len(answer["extra"]["errors"]) == 3  # a, b, and the missing required days
