"""Integers beyond the range of the column they name are refused with a 422 naming the field and the bound, and
nothing is written; at the bound they are looked up as usual. Each answered 500 before (PostgreSQL's overflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client, errors
from tests.support.database import rows, sql
from tests.support.repositories import add_repository
from tests.support.templates import body
from tests.support.tenants import Caller

INT4_OVER = 2**31
INT8_OVER = 2**63


async def test_integers_beyond_their_column_are_refused_naming_the_field_and_the_bound(
    client: Client, alice: Caller, origin: Path, template: dict[str, Any], database_url: str
) -> None:
    before = await rows(database_url, alice)
    viewer, admin = alice[Role.VIEWER], alice[Role.ADMIN]
    paths = {
        f"/api/v1/task-templates/{INT8_OVER}": "template_id",
        f"/api/v1/task-templates/{2**70}/versions": "template_id",
        f"/api/v1/git-repositories/{INT8_OVER}": "repository_id",
    }
    for path, field in paths.items():
        assert errors(await client.get(path, headers=viewer)) == {field: f"Expected `int` <= {INT8_OVER - 1}"}
    queries = {
        "/api/v1/tasks": ({"template_id": INT8_OVER}, "template_id", INT8_OVER - 1),
        "/api/v1/task-templates": ({"page": INT4_OVER}, "page", INT4_OVER - 1),
        "/api/v1/git-repositories": ({"page": 2**70}, "page", INT4_OVER - 1),
    }
    for path, (params, field, bound) in queries.items():
        found = errors(await client.get(path, params=params, headers=viewer))
        assert found == {field: f"Expected `int` <= {bound}"}
    task = await client.post(
        "/api/v1/tasks", json={"template_id": INT8_OVER, "version": INT4_OVER}, headers=alice[Role.OPERATOR]
    )
    found = errors(task)
    assert str(INT8_OVER - 1) in found["template_id"]
    assert str(INT4_OVER - 1) in found["version"]
    repository_id = await add_repository(client, alice, origin, name="ops-ints")
    imported = await client.post("/api/v1/task-templates", json=body(INT8_OVER, code="big"), headers=admin)
    assert str(INT8_OVER - 1) in errors(imported)["repository_id"]
    changed = await client.put(f"/api/v1/task-templates/{template['id']}", json={"version": INT4_OVER}, headers=admin)
    assert str(INT4_OVER - 1) in errors(changed)["version"]
    assert await rows(database_url, alice) == {**before, "git_repositories": before["git_repositories"] + 1}
    assert repository_id  # the one row this test meant to write

    # At the bounds, the lookups are the usual ones.
    missing = await client.get(f"/api/v1/task-templates/{INT8_OVER - 1}", headers=viewer)
    assert missing.status_code == 404, missing.text
    last_page = await client.get("/api/v1/task-templates", params={"page": INT4_OVER - 1}, headers=viewer)
    assert (last_page.status_code, last_page.json()["items"]) == (200, [])
    none = await client.get("/api/v1/tasks", params={"template_id": INT8_OVER - 1}, headers=viewer)
    assert (none.status_code, none.json()["items"]) == (200, [])


async def test_maintenance_figures_beyond_what_a_run_can_use_are_refused_and_no_run_starts(
    client: Client, alice: Caller, database_url: str
) -> None:
    runs = await sql(database_url, "SELECT count(*) FROM maintenance_runs")
    system = alice[Role.SYSTEM]
    gc = await client.post("/api/v1/admin/gc", json={"dry_run": True, "grace_seconds": 1e300}, headers=system)
    assert "316224000" in errors(gc)["grace_seconds"]  # ten years of seconds
    verify = await client.post("/api/v1/admin/verify", json={"sample": INT8_OVER}, headers=system)
    assert str(INT8_OVER - 1) in errors(verify)["sample"]
    assert await sql(database_url, "SELECT count(*) FROM maintenance_runs") == runs


async def test_a_last_event_id_beyond_any_line_is_refused(
    client: Client, alice: Caller, template: dict[str, Any]
) -> None:
    task = await client.post("/api/v1/tasks", json={"template_id": template["id"]}, headers=alice[Role.OPERATOR])
    assert task.status_code == 201, task.text
    answer = await client.get(
        f"/api/v1/tasks/{task.json()['id']}/logs", headers={**alice[Role.VIEWER], "Last-Event-ID": str(INT8_OVER)}
    )
    assert errors(answer) == {"Last-Event-ID": "expected the seq of the last line received"}
