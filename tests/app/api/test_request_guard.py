"""NUL characters (bodies, task parameters, queries, paths) and JSON nested too deep are refused with a 422 naming
the place, and nothing is written. Each answered 500 before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.db.models import Role
from tests.support.api import Client, errors
from tests.support.database import rows
from tests.support.repositories import add_repository
from tests.support.templates import body
from tests.support.tenants import Caller


async def test_a_nul_in_any_body_string_is_refused_naming_its_place_and_nothing_is_written(
    client: Client, alice: Caller, origin: Path, template: dict[str, Any], database_url: str
) -> None:
    repository_id = await add_repository(client, alice, origin, name="ops-nul")
    before = await rows(database_url, alice)
    admin = alice[Role.ADMIN]
    repository = await client.post(
        "/api/v1/git-repositories", json={"name": "a\x00b", "url": str(origin)}, headers=admin
    )
    assert set(errors(repository)) == {"name"}
    imported = await client.post(
        "/api/v1/task-templates",
        json=body(
            repository_id,
            code="nul",
            name="Disk\x00",
            original_path="scripts/\x00",
            entry_file="x\x00.sh",
            description="\x00",
            parameters=[{"name": "days", "description": "keep\x00"}],
        ),
        headers=admin,
    )
    found = errors(imported)
    assert set(found) == {"name", "original_path", "entry_file", "description", "parameters.0.description"}
    assert all("NUL" in message for message in found.values())
    changed = await client.put(f"/api/v1/task-templates/{template['id']}", json={"description": "a\x00"}, headers=admin)
    assert set(errors(changed)) == {"description"}
    task = await client.post(
        "/api/v1/tasks",
        json={"template_id": template["id"], "name": "n\x00", "params": {"note": "x\x00y", "tags": ["a", "\x00"]}},
        headers=alice[Role.OPERATOR],
    )
    assert set(errors(task)) == {"name", "params.note", "params.tags.1"}
    named = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"no\x00te": "x"}}, headers=alice[Role.OPERATOR]
    )
    assert "NUL" in errors(named)["params.no\x00te"]
    assert await rows(database_url, alice) == before
    shown = await client.get(f"/api/v1/task-templates/{template['id']}", headers=alice[Role.VIEWER])
    assert shown.json()["description"] == "frees space"


async def test_a_nul_in_a_query_or_path_parameter_is_refused_naming_it(client: Client, alice: Caller) -> None:
    viewer = alice[Role.VIEWER]
    listed = await client.get(
        "/api/v1/task-templates", params={"search": "disk\x00", "script_type": "\x00"}, headers=viewer
    )
    assert set(errors(listed)) == {"search", "script_type"}
    assert "NUL" in errors(listed)["search"]
    artifact = await client.get("/api/v1/artifacts/sha256:%00", headers=viewer)
    assert "NUL" in errors(artifact)["digest"]
    # A query parameter the route does not read is ignored, as any other unknown one.
    ignored = await client.get("/api/v1/task-templates", params={"unknown": "\x00"}, headers=viewer)
    assert ignored.status_code == 200, ignored.text


@pytest.mark.parametrize("depth", [33, 5000])
async def test_a_body_nested_deeper_than_32_levels_is_refused_and_nothing_is_written(
    client: Client, alice: Caller, template: dict[str, Any], database_url: str, depth: int
) -> None:
    before = await rows(database_url, alice)
    answer = await post_nested(client, alice, template["id"], depth)
    [message] = errors(answer).values()
    assert "nested deeper than 32 levels" in message
    assert await rows(database_url, alice) == before
    # 32 levels get past the guard: what is wrong then is the value itself, which the parameter's check names.
    assert errors(await post_nested(client, alice, template["id"], 32)) == {"params.note": "expected text, got a list"}


async def post_nested(client: Client, caller: Caller, template_id: int, depth: int) -> Any:
    """A task whose `note` is arrays nested so that the body's deepest level is `depth` (the body is level 1)."""
    nested = "[" * (depth - 2) + "]" * (depth - 2)
    content = f'{{"template_id": {template_id}, "params": {{"note": {nested}}}}}'
    return await client.post(
        "/api/v1/tasks", content=content, headers={**caller[Role.OPERATOR], "Content-Type": "application/json"}
    )
