"""Where a template runs (on the worker or on targets) and how (sudo, forks, max_fail_percentage): set on import,
shown, changed in place, refused when out of range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.repositories import add_repository
from tests.support.templates import assert_refused_on_import_and_update, body
from tests.support.tenants import Caller

RUN_FIELDS = ("execution", "require_sudo", "forks", "max_fail_percentage")


def _run_fields(template: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(template[name] for name in RUN_FIELDS)


async def test_a_playbook_runs_on_targets_and_a_script_on_the_worker_unless_the_import_says(
    client: Client, alice: Caller, origin: Path
) -> None:
    repository_id = await add_repository(client, alice, origin)
    made = {}
    for code, fields in (
        ("script", {}),
        ("playbook", {"script_type": "ansible"}),
        ("local_playbook", {"script_type": "ansible", "execution": "worker"}),
        ("fanout", {"execution": "targets", "require_sudo": True, "forks": 20, "max_fail_percentage": 25}),
    ):
        answer = await client.post(
            "/api/v1/task-templates", json=body(repository_id, code=code, **fields), headers=alice[Role.ADMIN]
        )
        assert answer.status_code == 201, answer.text
        made[code] = answer.json()
    assert _run_fields(made["script"]) == ("worker", False, 5, 0)
    assert _run_fields(made["playbook"]) == ("targets", False, 5, 0)
    assert _run_fields(made["local_playbook"]) == ("worker", False, 5, 0)
    assert _run_fields(made["fanout"]) == ("targets", True, 20, 25)
    listed = (await client.get("/api/v1/task-templates?search=fanout", headers=alice[Role.VIEWER])).json()
    assert _run_fields(listed["items"][0]) == ("targets", True, 20, 25)


async def test_run_fields_change_in_place(client: Client, alice: Caller, origin: Path) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    url = f"/api/v1/task-templates/{created['id']}"
    changed = await client.put(
        url,
        json={"execution": "targets", "require_sudo": True, "forks": 1000, "max_fail_percentage": 100},
        headers=alice[Role.ADMIN],
    )
    assert changed.status_code == 200, changed.text
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert (*_run_fields(shown), shown["version"]) == ("targets", True, 1000, 100, 1)
    back = await client.put(url, json={"execution": "worker", "require_sudo": False}, headers=alice[Role.ADMIN])
    assert _run_fields(back.json()) == ("worker", False, 1000, 100)


async def test_bad_run_fields_are_refused_naming_the_field(client: Client, alice: Caller, origin: Path) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    url = f"/api/v1/task-templates/{created['id']}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"execution": "ssh"}, "execution"),
        ({"forks": 0}, "forks"),
        ({"forks": 1001}, "forks"),
        ({"max_fail_percentage": -1}, "max_fail_percentage"),
        ({"max_fail_percentage": 101}, "max_fail_percentage"),
        ({"require_sudo": "maybe"}, "require_sudo"),
    ]
    await assert_refused_on_import_and_update(client, alice, repository_id, url, cases)
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert _run_fields(shown) == ("worker", False, 5, 0)
    assert (await client.get("/api/v1/task-templates", headers=alice[Role.VIEWER])).json()["total"] == 1
