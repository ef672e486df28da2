"""Changing templates: edits in place or as versions, switching back, sync from Git, deletion."""

from __future__ import annotations

from pathlib import Path

from app.db.models import Role
from tests.support.api import Client
from tests.support.repositories import add_repository, git
from tests.support.templates import body
from tests.support.tenants import Caller


async def _import(client: Client, caller: Caller, origin: Path) -> dict[str, object]:
    repository_id = await add_repository(client, caller, origin)
    response = await client.post("/api/v1/task-templates", json=body(repository_id), headers=caller[Role.ADMIN])
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_sync_makes_a_version_only_when_the_content_changed(client: Client, alice: Caller, origin: Path) -> None:
    created = await _import(client, alice, origin)
    url = f"/api/v1/task-templates/{created['id']}"
    unchanged = await client.post(f"{url}/sync", headers=alice[Role.ADMIN])
    assert unchanged.status_code == 201, unchanged.text
    assert (unchanged.json()["changed"], unchanged.json()["version"]) == (False, None)
    assert unchanged.json()["detail"].startswith("nothing changed")

    (origin / "unrelated.txt").write_text("outside the template's path\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "elsewhere")
    assert (await client.post(f"{url}/sync", headers=alice[Role.ADMIN])).json()["changed"] is False

    (origin / "scripts" / "disk_cleanup" / "cleanup.sh").write_text("#!/bin/bash\necho v2\n")
    git(origin, "commit", "-qam", "v2")
    changed = await client.post(f"{url}/sync", headers=alice[Role.ADMIN])
    assert (changed.json()["changed"], changed.json()["version"]) == (True, 2)
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert shown["version"] == 2
    assert shown["artifact"]["digest"] != created["artifact"]["digest"]  # type: ignore[index]
    assert shown["source_git_info"]["commit_sha"] == git(origin, "rev-parse", "HEAD")
    versions = (await client.get(f"{url}/versions", headers=alice[Role.VIEWER])).json()
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["artifact"] == created["artifact"]


async def test_edits_in_place_and_as_versions_and_switching_back(client: Client, alice: Caller, origin: Path) -> None:
    created = await _import(client, alice, origin)
    url = f"/api/v1/task-templates/{created['id']}"
    renamed = await client.put(url, json={"name": "Cleanup", "timeout": 60}, headers=alice[Role.ADMIN])
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["timeout"], renamed.json()["version"]) == ("Cleanup", 60, 1)

    params = await client.put(
        url, json={"parameters": [{"name": "days", "type": "integer"}]}, headers=alice[Role.ADMIN]
    )
    assert params.json()["version"] == 2
    assert params.json()["artifact"] == created["artifact"]  # same files, new runtime definition

    entry = await client.put(url, json={"entry_file": "README.md"}, headers=alice[Role.ADMIN])
    assert (entry.json()["version"], entry.json()["entry_file"]) == (3, "README.md")
    missing = await client.put(url, json={"entry_file": "nope.sh"}, headers=alice[Role.ADMIN])
    assert missing.status_code == 422

    back = await client.put(url, json={"version": 1}, headers=alice[Role.ADMIN])
    assert (back.json()["version"], back.json()["entry_file"]) == (1, "cleanup.sh")
    unknown = await client.put(url, json={"version": 9}, headers=alice[Role.ADMIN])
    assert unknown.status_code == 422


async def test_delete_and_isolation(client: Client, alice: Caller, bob: Caller, origin: Path) -> None:
    created = await _import(client, alice, origin)
    url = f"/api/v1/task-templates/{created['id']}"
    for method in ("PUT", "DELETE"):
        response = await client.request(
            method, url, headers=bob[Role.ADMIN], json={"name": "x"} if method == "PUT" else None
        )
        assert response.status_code == 404
    assert (await client.post(f"{url}/sync", headers=bob[Role.ADMIN])).status_code == 404
    assert (await client.delete(url, headers=alice[Role.VIEWER])).status_code == 403
    assert (await client.delete(url, headers=alice[Role.ADMIN])).status_code == 204
    assert (await client.get(url, headers=alice[Role.ADMIN])).status_code == 404


async def test_sync_after_the_repository_was_deleted_says_why(client: Client, alice: Caller, origin: Path) -> None:
    created = await _import(client, alice, origin)
    repository_id = created["source_git_info"]["repository_id"]  # type: ignore[index]
    await client.delete(f"/api/v1/git-repositories/{repository_id}", headers=alice[Role.ADMIN])
    response = await client.post(f"/api/v1/task-templates/{created['id']}/sync", headers=alice[Role.ADMIN])
    assert response.status_code == 409
    assert "no repository" in response.json()["detail"]
