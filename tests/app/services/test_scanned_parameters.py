"""An import without parameters takes the schema the scan reads; syncs read it again unless it was set by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.repositories import add_repository, git
from tests.support.templates import bare_body
from tests.support.tenants import Caller

HEADER = """#!/bin/bash
# Name: Disk cleanup
# Description: frees space
# @param days integer Keep files newer than this (required)
# @param env (dev/staging/prod)
# @param api_token The token to call the API with
echo "cleaning $AHOP_PARAM_DAYS"
"""


def _write_header(origin: Path, header: str, message: str) -> None:
    (origin / "scripts" / "disk_cleanup" / "cleanup.sh").write_text(header)
    git(origin, "commit", "-qam", message)


async def _imported_with_header(client: Client, caller: Caller, origin: Path) -> dict[str, Any]:
    """The origin's script with HEADER committed, imported without parameters; the template's JSON."""
    _write_header(origin, HEADER, "header")
    repository_id = await add_repository(client, caller, origin)
    response = await client.post("/api/v1/task-templates", json=bare_body(repository_id), headers=caller[Role.ADMIN])
    return dict(response.json())


async def _scanned(client: Client, caller: Caller, repository_id: int, original_path: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/git-repositories/{repository_id}/scan-templates", headers=caller[Role.OPERATOR]
    )
    assert response.status_code == 201, response.text
    by_path: dict[str, dict[str, Any]] = {c["original_path"]: c for c in response.json()["candidates"]}
    return by_path[original_path]


async def test_an_import_without_parameters_records_the_schema_the_scan_shows(
    client: Client, alice: Caller, origin: Path
) -> None:
    _write_header(origin, HEADER, "header")
    repository_id = await add_repository(client, alice, origin)
    candidate = await _scanned(client, alice, repository_id, "scripts/disk_cleanup")

    response = await client.post("/api/v1/task-templates", json=bare_body(repository_id), headers=alice[Role.ADMIN])
    assert response.status_code == 201, response.text
    template = response.json()
    assert template["parameters"] == candidate["parameters"]
    assert [(p["name"], p["type"], p["required"]) for p in template["parameters"]] == [
        ("days", "integer", True),
        ("env", "select", False),
        ("api_token", "password", False),
    ]
    assert template["parameters_source"] == "scanned"
    versions = await client.get(f"/api/v1/task-templates/{template['id']}/versions", headers=alice[Role.VIEWER])
    assert versions.json()[0]["parameters_source"] == "scanned"

    # The README's first task: `ahop task run disk_cleanup -p days=7` is a task with days=7.
    task = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"days": 7}}, headers=alice[Role.OPERATOR]
    )
    assert task.status_code == 201, task.text
    refused = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"env": "qa"}}, headers=alice[Role.OPERATOR]
    )
    assert refused.status_code == 422
    assert {e["field"] for e in refused.json()["extra"]["errors"]} == {"params.days", "params.env"}


async def test_parameters_given_replace_the_scanned_schema_and_syncs_keep_them(
    client: Client, alice: Caller, origin: Path
) -> None:
    _write_header(origin, HEADER, "header")
    repository_id = await add_repository(client, alice, origin)
    given = [{"name": "days", "type": "integer", "required": False, "default": 30}]
    response = await client.post(
        "/api/v1/task-templates", json=bare_body(repository_id, parameters=given), headers=alice[Role.ADMIN]
    )
    assert response.status_code == 201, response.text
    template = response.json()
    assert [(p["name"], p["default"]) for p in template["parameters"]] == [("days", 30)]
    assert template["parameters_source"] == "manual"

    _write_header(origin, HEADER.replace("# @param env (dev/staging/prod)\n", ""), "drop env")
    synced = await client.post(f"/api/v1/task-templates/{template['id']}/sync", headers=alice[Role.ADMIN])
    assert synced.status_code == 201, synced.text
    answer = synced.json()
    assert (answer["changed"], answer["version"], answer["parameters_source"]) == (True, 2, "manual")
    assert answer["parameters_changed"] is False
    assert answer["detail"].endswith("parameters kept: they were set by hand")
    shown = (await client.get(f"/api/v1/task-templates/{template['id']}", headers=alice[Role.VIEWER])).json()
    assert (shown["version"], shown["parameters"], shown["parameters_source"]) == (2, template["parameters"], "manual")


async def test_a_sync_reads_the_schema_again_from_the_new_commit(client: Client, alice: Caller, origin: Path) -> None:
    template = await _imported_with_header(client, alice, origin)
    url = f"/api/v1/task-templates/{template['id']}"

    unchanged = (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()
    assert (unchanged["changed"], unchanged["parameters_source"], unchanged["parameters_changed"]) == (
        False,
        "scanned",
        False,
    )

    _write_header(origin, HEADER.replace("(dev/staging/prod)", "(dev/prod)") + "# trailing\n", "two envs")
    changed = (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()
    assert (changed["changed"], changed["version"], changed["parameters_source"]) == (True, 2, "scanned")
    assert changed["parameters_changed"] is True
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    env = next(p for p in shown["parameters"] if p["name"] == "env")
    assert env["options"] == ["dev", "prod"]
    scanned = await _scanned(client, alice, template["source_git_info"]["repository_id"], "scripts/disk_cleanup")
    assert shown["parameters"] == scanned["parameters"]

    # An edit of the schema makes it manual: later syncs keep it.
    edited = await client.put(
        url, json={"parameters": [{"name": "days", "type": "integer"}]}, headers=alice[Role.ADMIN]
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["parameters_source"]) == (3, "manual")
    _write_header(origin, HEADER + "# @param extra another one\n", "extra")
    kept = (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()
    assert (kept["changed"], kept["parameters_source"]) == (True, "manual")
    assert [p["name"] for p in (await client.get(url, headers=alice[Role.VIEWER])).json()["parameters"]] == ["days"]


async def test_an_ansible_import_takes_its_survey(client: Client, alice: Caller, origin: Path) -> None:
    playbooks = origin / "playbooks" / "nginx"
    playbooks.mkdir(parents=True)
    (playbooks / "playbook.yml").write_text("- hosts: all\n  tasks: []\n")
    (playbooks / "survey.yml").write_text(
        "name: Deploy nginx\ndescription: deploys\nspec:\n"
        "  - {variable: port, question_name: Port, type: integer, required: true, min: 1, max: 65535, default: 80}\n"
        "  - {variable: site, question_name: Site, type: text, min: 3, max: 40}\n"
    )
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "nginx")
    repository_id = await add_repository(client, alice, origin)
    candidate = await _scanned(client, alice, repository_id, "playbooks/nginx")
    body = bare_body(
        repository_id, code="nginx", script_type="ansible", entry_file="playbook.yml", original_path="playbooks/nginx"
    )
    response = await client.post("/api/v1/task-templates", json=body, headers=alice[Role.ADMIN])
    assert response.status_code == 201, response.text
    template = response.json()
    assert template["parameters"] == candidate["parameters"]
    assert [(p["name"], p["default"]) for p in template["parameters"]] == [("port", 80), ("site", None)]
    assert template["parameters"][1]["validation"]["min_length"] == 3


async def test_a_single_file_import_reads_its_own_header(client: Client, alice: Caller, origin: Path) -> None:
    _write_header(origin, HEADER, "header")
    repository_id = await add_repository(client, alice, origin)
    body = bare_body(repository_id, original_path="scripts/disk_cleanup/cleanup.sh")
    template = (await client.post("/api/v1/task-templates", json=body, headers=alice[Role.ADMIN])).json()
    assert [p["name"] for p in template["parameters"]] == ["days", "env", "api_token"]


async def test_parameters_given_equal_to_the_scanned_ones_pin_them(client: Client, alice: Caller, origin: Path) -> None:
    template = await _imported_with_header(client, alice, origin)
    url = f"/api/v1/task-templates/{template['id']}"
    pinned = await client.put(url, json={"parameters": template["parameters"]}, headers=alice[Role.ADMIN])
    assert pinned.status_code == 200, pinned.text
    assert (pinned.json()["version"], pinned.json()["parameters_source"]) == (2, "manual")
    _write_header(origin, HEADER + "# @param extra another one\n", "extra")
    kept = (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()
    assert (kept["changed"], kept["parameters_source"]) == (True, "manual")
    assert (await client.get(url, headers=alice[Role.VIEWER])).json()["parameters"] == template["parameters"]


async def test_a_header_holding_nul_characters_imports_without_them(
    client: Client, alice: Caller, origin: Path
) -> None:
    _write_header(origin, HEADER.replace("Keep files newer", "Keep\0 files newer"), "a NUL in the header")
    repository_id = await add_repository(client, alice, origin)
    response = await client.post("/api/v1/task-templates", json=bare_body(repository_id), headers=alice[Role.ADMIN])
    assert response.status_code == 201, response.text
    days = next(p for p in response.json()["parameters"] if p["name"] == "days")
    assert days["description"] == "Keep files newer than this"
