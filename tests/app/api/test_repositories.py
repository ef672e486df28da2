"""Git repositories through the API: validation, credentials never returned, sync, tenant isolation."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from httpx import Response
from litestar.testing import AsyncTestClient

from app.db.models import Role
from app.git.mirror import Mirrors
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client
from tests.support.database import sql
from tests.support.metrics_text import parse_samples, value
from tests.support.repositories import commit_all, git, repository_of
from tests.support.tenants import Caller
from tests.support.waiting import until


async def _add(client: Client, caller: Caller, origin: Path, **extra: object) -> dict[str, object]:
    response = await client.post(
        "/api/v1/git-repositories",
        json={"name": f"ops-{origin.name}", "url": str(origin), "branch": "main", **extra},
        headers=caller[Role.ADMIN],
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_add_sync_and_read_a_repository(client: Client, alice: Caller, origin: Path) -> None:
    created = await _add(client, alice, origin)
    assert created["head_commit"] is None
    synced = await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=alice[Role.OPERATOR])
    assert synced.status_code == 201, synced.text
    assert synced.json()["commit"] == git(origin, "rev-parse", "HEAD")

    (origin / "new.sh").write_text("echo new\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "second")
    again = await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=alice[Role.OPERATOR])
    assert again.json()["commit"] == git(origin, "rev-parse", "HEAD")

    shown = await client.get(f"/api/v1/git-repositories/{created['id']}", headers=alice[Role.VIEWER])
    assert shown.json()["head_commit"] == git(origin, "rev-parse", "HEAD")
    assert shown.json()["synced_at"].endswith("Z")
    listed = await client.get("/api/v1/git-repositories?page=1&page_size=10", headers=alice[Role.VIEWER])
    assert listed.json()["total"] == 1
    assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
    assert (listed.json()["page"], listed.json()["page_size"]) == (1, 10)


async def test_credentials_are_stored_but_never_returned(client: Client, alice: Caller, origin: Path) -> None:
    secret = "ghp_supersecretvalue123"
    created = await _add(client, alice, origin, credentials={"kind": "https_token", "secret": secret})
    assert created["auth_kind"] == "https_token"
    for response in (
        await client.get(f"/api/v1/git-repositories/{created['id']}", headers=alice[Role.ADMIN]),
        await client.get("/api/v1/git-repositories", headers=alice[Role.ADMIN]),
    ):
        assert secret not in response.text
        assert "secret" not in response.text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("-uhttps://example.com/x.git", "starts with '-'"),
        ("https://user:pw@example.com/x.git", "credentials must not be part of the url"),
        ("ftp://example.com/x.git", "scheme 'ftp' is not allowed"),
        ("https://", "names no host"),
    ],
)
async def test_hostile_urls_are_refused_with_the_reason(client: Client, alice: Caller, url: str, reason: str) -> None:
    response = await client.post(
        "/api/v1/git-repositories", json={"name": "bad", "url": url}, headers=alice[Role.ADMIN]
    )
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert response.json()["extra"]["errors"][0]["field"] == "url"
    listed = await client.get("/api/v1/git-repositories", headers=alice[Role.ADMIN])
    assert listed.json()["total"] == 0


async def test_every_bad_field_is_listed(client: Client, alice: Caller) -> None:
    response = await client.post("/api/v1/git-repositories", json={"name": "", "branch": 7}, headers=alice[Role.ADMIN])
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["extra"]["errors"]}
    assert {"name", "url", "branch"} <= fields


async def test_a_bad_branch_and_a_duplicate_name(client: Client, alice: Caller, origin: Path) -> None:
    bad = await client.post(
        "/api/v1/git-repositories", json={"name": "x", "url": str(origin), "branch": "a..b"}, headers=alice[Role.ADMIN]
    )
    assert (bad.status_code, bad.json()["extra"]["errors"][0]["field"]) == (422, "branch")
    await _add(client, alice, origin)
    duplicate = await client.post(
        "/api/v1/git-repositories", json={"name": f"ops-{origin.name}", "url": str(origin)}, headers=alice[Role.ADMIN]
    )
    assert duplicate.status_code == 409


async def test_renaming_to_a_name_in_use_answers_409_and_keeps_the_name(
    client: Client, alice: Caller, origin: Path
) -> None:
    first = await _add(client, alice, origin)
    second = await _add(client, alice, origin, name="ops-second")
    renamed = await client.put(
        f"/api/v1/git-repositories/{second['id']}", json={"name": first["name"]}, headers=alice[Role.ADMIN]
    )
    assert renamed.status_code == 409, renamed.text
    assert renamed.json()["detail"] == f"a repository named {first['name']!r} already exists"
    shown = await client.get(f"/api/v1/git-repositories/{second['id']}", headers=alice[Role.VIEWER])
    assert shown.json()["name"] == "ops-second"


async def test_a_remote_that_fails_later_answers_502_with_gits_message(
    client: Client, alice: Caller, origin: Path
) -> None:
    created = await _add(client, alice, origin)
    await asyncio.to_thread(origin.rename, origin.with_name("moved-away"))
    response = await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=alice[Role.ADMIN])
    assert response.status_code == 502
    assert "does not appear to be a git repository" in response.json()["detail"]


async def test_auth_roles_and_tenant_isolation(client: Client, alice: Caller, bob: Caller, origin: Path) -> None:
    assert (await client.get("/api/v1/git-repositories")).status_code == 401
    bogus = {"Authorization": "Bearer ahop_not-a-token"}
    assert (await client.get("/api/v1/git-repositories", headers=bogus)).status_code == 401
    viewer_add = await client.post(
        "/api/v1/git-repositories", json={"name": "v", "url": str(origin)}, headers=alice[Role.VIEWER]
    )
    assert viewer_add.status_code == 403

    created = await _add(client, alice, origin)
    path = f"/api/v1/git-repositories/{created['id']}"
    for method, url in (("GET", path), ("PUT", path), ("DELETE", path), ("POST", f"{path}/sync")):
        response = await client.request(method, url, headers=bob[Role.ADMIN], json={} if method == "PUT" else None)
        assert response.status_code == 404, (method, url, response.text)
    assert (await client.get("/api/v1/git-repositories", headers=bob[Role.ADMIN])).json()["total"] == 0
    assert (await client.get(path, headers=alice[Role.VIEWER])).status_code == 200


async def test_the_mirror_of_a_repository_whose_removal_was_cut_short_is_removed_at_the_next_start(
    client: Client, api_settings: AppSettings, alice: Caller, origin: Path, database_url: str
) -> None:
    created = await _add(client, alice, origin)
    synced = await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=alice[Role.ADMIN])
    assert synced.status_code == 201, synced.text
    kept = await _add(client, alice, origin, name="kept")
    synced = await client.post(f"/api/v1/git-repositories/{kept['id']}/sync", headers=alice[Role.ADMIN])
    assert synced.status_code == 201, synced.text
    mirrors = Mirrors(api_settings.data_dir, api_settings.git_options())
    stale, live = (
        mirrors.path(alice.tenant_id, int(str(created["id"]))),
        mirrors.path(alice.tenant_id, int(str(kept["id"]))),
    )
    # What a server stopped between the delete's commit and the mirror's removal leaves: no row, a mirror.
    await sql(database_url, "DELETE FROM git_repositories WHERE id = $1", int(str(created["id"])))
    assert (stale / "HEAD").exists()

    async with AsyncTestClient(create_app(api_settings)):

        async def removed() -> bool:
            return not stale.exists()

        await until(removed, "the stale mirror to be removed by the next start")
    assert (live / "HEAD").exists()


async def test_delete_removes_the_record_and_its_mirror(
    client: Client, alice: Caller, origin: Path, tmp_path: Path
) -> None:
    created = await _add(client, alice, origin)
    await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=alice[Role.ADMIN])
    mirror = tmp_path / "server-data" / "mirrors" / alice.tenant_id / f"{created['id']}.git"
    assert (mirror / "HEAD").exists()
    deleted = await client.delete(f"/api/v1/git-repositories/{created['id']}", headers=alice[Role.ADMIN])
    assert deleted.status_code == 204
    assert not mirror.exists()
    gone = await client.get(f"/api/v1/git-repositories/{created['id']}", headers=alice[Role.ADMIN])
    assert gone.status_code == 404


async def _waiting_for_lock(client: Client) -> float:
    """How many requests of the API wait for a mirror's lock, as its metrics say."""
    samples = parse_samples((await client.get("/metrics")).text)
    return value(samples, "ahop_git_work", state="waiting_lock")


async def test_a_sync_waiting_on_a_deleted_repositorys_mirror_does_not_create_it_again(
    client: Client, api_settings: AppSettings, alice: Caller, origin: Path
) -> None:
    created = await _add(client, alice, origin)
    path = f"/api/v1/git-repositories/{created['id']}"
    assert (await client.post(f"{path}/sync", headers=alice[Role.OPERATOR])).status_code == 201
    mirrors = Mirrors(api_settings.data_dir, api_settings.git_options())
    mirror = mirrors.path(alice.tenant_id, int(str(created["id"])))
    lock = mirrors.lock(alice.tenant_id, int(str(created["id"])))
    await asyncio.to_thread(lock.acquire)  # as a long fetch of this mirror would hold it
    try:
        # The test client blocks its caller until the app answers: each waiting request gets a thread of its own.
        sync = asyncio.create_task(_in_thread(client.post(f"{path}/sync", headers=alice[Role.OPERATOR])))

        async def waiters() -> float:
            return await _waiting_for_lock(client)

        await until(lambda: _at_least(waiters, 1), "the sync to wait for the mirror's lock")
        delete = asyncio.create_task(_in_thread(client.delete(path, headers=alice[Role.ADMIN])))
        await until(lambda: _at_least(waiters, 2), "the delete to wait for the mirror's lock too")
        assert (mirror / "HEAD").exists(), "the mirror is removed after the fetch in progress, not under it"
    finally:
        lock.release()
    synced, deleted = await sync, await delete
    assert deleted.status_code == 204, deleted.text
    assert synced.status_code == 404, synced.text
    assert not mirror.exists()
    assert (await client.get(path, headers=alice[Role.ADMIN])).status_code == 404


async def _in_thread(request: Coroutine[Any, Any, Response]) -> Response:
    return await asyncio.to_thread(asyncio.run, request)


async def _at_least(count: Any, least: int) -> bool:
    return bool(await count() >= least)


async def _synced_mirror(client: Client, settings: AppSettings, caller: Caller, origin: Path) -> Path:
    """Add `origin` as a repository of the caller's and sync it once; where its mirror is."""
    created = await _add(client, caller, origin)
    synced = await client.post(f"/api/v1/git-repositories/{created['id']}/sync", headers=caller[Role.ADMIN])
    assert synced.status_code == 201
    return settings.data_dir / "mirrors" / caller.tenant_id / f"{created['id']}.git"


async def test_a_tenant_cannot_add_another_tenants_mirror_or_paths_outside_the_roots(
    client: Client, api_settings: AppSettings, alice: Caller, bob: Caller, origin: Path, tmp_path: Path
) -> None:
    mirror = await _synced_mirror(client, api_settings, alice, origin)
    assert (mirror / "HEAD").exists()
    link = tmp_path / "shared-scripts.git"
    link.symlink_to(mirror)
    dotted = origin / ".." / mirror.relative_to(tmp_path)
    roots = api_settings.git_file_roots
    refusals = [
        (str(mirror), str(mirror), "lies in the server's data directory"),
        (f"file://{mirror}", str(mirror), "lies in the server's data directory"),
        (str(link), str(link), "lies in the server's data directory"),
        (f"file://{link}", str(link), "lies in the server's data directory"),
        (str(dotted), str(dotted), "lies in the server's data directory"),
        ("/usr/share", "/usr/share", "is not under an allowed root"),
        ("origin", "origin", "is not absolute"),
        (f"file://server{origin}", f"file://server{origin}", "is not a local path"),
    ]
    for url, named, reason in refusals:
        body = {"name": "borrowed", "url": url, "branch": "main"}
        response = await client.post("/api/v1/git-repositories", json=body, headers=bob[Role.ADMIN])
        assert response.status_code == 422, (url, response.text)
        detail = response.json()["detail"]
        assert reason in detail, (url, detail)
        assert repr(named) in detail, (url, detail)
        assert roots in detail, (url, detail)
        assert response.json()["extra"]["errors"][0]["field"] == "url"
    assert (await client.get("/api/v1/git-repositories", headers=bob[Role.ADMIN])).json()["total"] == 0

    # Nor by changing a repository of one's own to point there.
    own = await _add(client, bob, origin, name="bobs")
    moved = await client.put(
        f"/api/v1/git-repositories/{own['id']}", json={"url": f"file://{link}"}, headers=bob[Role.ADMIN]
    )
    assert moved.status_code == 422, moved.text
    shown = await client.get(f"/api/v1/git-repositories/{own['id']}", headers=bob[Role.ADMIN])
    assert shown.json()["url"] == str(origin)


async def test_a_local_path_is_checked_again_at_every_sync(
    client: Client, api_settings: AppSettings, alice: Caller, bob: Caller, origin: Path, tmp_path: Path
) -> None:
    alices_mirror = await _synced_mirror(client, api_settings, alice, origin)
    link = tmp_path / "team-scripts"
    link.symlink_to(origin)
    bobs = await _add(client, bob, link, name="team")
    link.unlink()
    link.symlink_to(alices_mirror)  # the link now leads into the server's mirrors
    synced = await client.post(f"/api/v1/git-repositories/{bobs['id']}/sync", headers=bob[Role.ADMIN])
    assert synced.status_code == 422, synced.text
    assert "lies in the server's data directory" in synced.json()["detail"]
    assert not (api_settings.data_dir / "mirrors" / bob.tenant_id / f"{bobs['id']}.git").exists()


async def test_scan_lists_candidates_with_inferred_parameters(client: Client, alice: Caller, tmp_path: Path) -> None:
    repo = tmp_path / "ops-scripts"
    (repo / "scripts" / "disk_cleanup").mkdir(parents=True)
    (repo / "ansible" / "deploy").mkdir(parents=True)
    (repo / "scripts" / "disk_cleanup" / "cleanup.sh").write_text(
        "#!/bin/bash\n# Name: 磁盘清理\n# Description: 清理过期文件\n"
        "# @param days 保留天数 (required)\n# @param report_dir where reports go\n# @param env (dev/prod)\necho\n"
    )
    (repo / "ansible" / "deploy" / "playbook.yml").write_text("- hosts: all\n")
    (repo / "ansible" / "deploy" / "survey.yml").write_text(
        "name: Deploy\nspec:\n  - {type: password, variable: db_password, question_name: DB password, required: true}\n"
    )
    commit_all(repo, message="scripts")
    created = await _add(client, alice, repo)
    response = await client.post(
        f"/api/v1/git-repositories/{created['id']}/scan-templates", headers=alice[Role.OPERATOR]
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["commit"] == git(repo, "rev-parse", "HEAD")
    by_path = {candidate["original_path"]: candidate for candidate in result["candidates"]}
    shell = by_path["scripts/disk_cleanup"]
    assert (shell["script_type"], shell["entry_file"], shell["name"]) == ("shell", "cleanup.sh", "磁盘清理")
    types = {p["name"]: p["type"] for p in shell["parameters"]}
    assert types == {"days": "integer", "report_dir": "text", "env": "select"}
    ansible = by_path["ansible/deploy"]
    assert (ansible["script_type"], ansible["entry_file"]) == ("ansible", "playbook.yml")
    assert ansible["parameters"][0]["type"] == "password"
    other = await client.post(f"/api/v1/git-repositories/{created['id']}/scan-templates", headers=alice[Role.VIEWER])
    assert other.status_code == 403


@pytest.mark.parametrize(
    "url",
    ["postgresql+asyncpg://postgres@127.0.0.1:1/none", "postgresql+asyncpg://postgres@no-such-host.invalid/none"],
    ids=["refused", "unknown-host"],
)
async def test_database_down_answers_503(api_settings: AppSettings, alice: Caller, url: str) -> None:
    settings = api_settings.model_copy(update={"database_url": url})
    async with AsyncTestClient(create_app(settings)) as down:
        response = await down.get("/api/v1/git-repositories", headers=alice[Role.ADMIN])
    assert response.status_code == 503
    assert "database is unavailable" in response.json()["detail"]


async def _scan(client: Client, caller: Caller, repo: Path) -> tuple[object, dict[str, dict[str, Any]]]:
    """Add `repo`, scan it: its id and its candidates by path."""
    created = await _add(client, caller, repo)
    response = await client.post(
        f"/api/v1/git-repositories/{created['id']}/scan-templates", headers=caller[Role.OPERATOR]
    )
    assert response.status_code == 201, response.text
    return created["id"], {candidate["path"]: candidate for candidate in response.json()["candidates"]}


async def test_a_scan_marks_candidates_over_the_servers_import_limits(
    api_settings: AppSettings, alice: Caller, tmp_path: Path
) -> None:
    repo = repository_of(
        tmp_path / "limits",
        {
            "big/big.sh": "# Name: big\n" + "#" * 30_000,
            "many/many.sh": "# Name: many\n",
            **{f"many/conf/{index}.ini": "a=1\n" for index in range(3)},
            "fits/fits.sh": "# Name: fits\n",
        },
    )
    limited = api_settings.model_copy(update={"max_template_bytes": 20_480, "max_template_files": 3})
    async with AsyncTestClient(create_app(limited)) as client:
        _, found = await _scan(client, alice, repo)
    assert {path: candidate["problems"] for path, candidate in found.items()} == {
        "big/big.sh": [
            {
                "file": "big",
                "line": None,
                "message": "makes a tar of 40,960 bytes; the server imports at most 20,480 (AHOP_MAX_TEMPLATE_BYTES)",
            }
        ],
        "many/many.sh": [
            {"file": "many", "line": None, "message": "4 files; the server imports at most 3 (AHOP_MAX_TEMPLATE_FILES)"}
        ],
        "fits/fits.sh": [],
    }


async def test_the_original_systems_playbooks_scan_import_and_keep_their_length_limits(
    client: Client, alice: Caller, tmp_path: Path
) -> None:
    repo = repository_of(
        tmp_path / "original",
        {
            "test/playbooks/survey.yml": "name: Nginx部署配置\nspec:\n"
            "  - {type: text, variable: server_name, required: true, min_length: 3, max_length: 255}\n",
            "test/playbooks/deploy_nginx.yml": "- hosts: all\n  tasks: []\n",
            "test/playbooks/test_realtime.yml": "- hosts: all\n  tasks: []\n",
            "test/playbooks/templates/nginx_site.conf.j2": f"server {{}}  # {secrets.token_hex(8)}\n",
        },
    )
    repository_id, found = await _scan(client, alice, repo)
    candidate = found["test/playbooks"]
    assert candidate["entry_file"] == "deploy_nginx.yml"
    assert [problem["message"].split(";")[0] for problem in candidate["problems"]] == [
        "no playbook.yml/main.yml/site.yml/deploy.yml"
    ]
    fields = ("name", "code", "script_type", "entry_file", "original_path", "description", "parameters")
    template = await client.post(
        "/api/v1/task-templates",
        json={
            **{key: candidate[key] for key in fields},
            "repository_id": repository_id,
            "timeout": 600,
            "execution": "worker",
        },
        headers=alice[Role.ADMIN],
    )
    assert template.status_code == 201, template.text
    short = await client.post(
        "/api/v1/tasks",
        json={"template_id": template.json()["id"], "params": {"server_name": "ab"}},
        headers=alice[Role.OPERATOR],
    )
    assert short.status_code == 422, short.text
    assert {item["field"]: item["message"] for item in short.json()["extra"]["errors"]} == {
        "params.server_name": "must have at least 3 characters, got 2"
    }


async def test_add_reads_the_remote_at_once_and_refuses_what_it_cannot_use(
    client: Client, alice: Caller, origin: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain-directory"
    plain.mkdir()
    empty = tmp_path / "empty-repository"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    cases = [
        ({"url": str(plain)}, "url", "not a Git repository, or not reachable"),
        ({"url": str(tmp_path / "no-such-path")}, "url", "does not appear to be a git repository"),
        ({"url": "https://127.0.0.1:1/ops.git"}, "url", "not a Git repository, or not reachable (unable to access"),
        (
            {"url": str(origin), "branch": "release"},
            "branch",
            "no branch 'release' at the remote (its default branch is 'main')",
        ),
        ({"url": str(empty)}, "branch", "required: the remote has no default branch"),
        ({"url": str(empty), "branch": "main"}, "branch", "no branch 'main' at the remote"),
    ]
    for body, field, message in cases:
        response = await client.post(
            "/api/v1/git-repositories", json={"name": "ops", **body}, headers=alice[Role.ADMIN]
        )
        assert response.status_code == 422, (body, response.text)
        (error,) = response.json()["extra"]["errors"]
        assert error["field"] == field, (body, error)
        assert message in error["message"] + response.json()["detail"], (body, response.json())
    listed = await client.get("/api/v1/git-repositories", headers=alice[Role.ADMIN])
    assert listed.json()["total"] == 0  # nothing was written


async def test_without_a_branch_the_remotes_default_branch_is_used(
    client: Client, alice: Caller, tmp_path: Path
) -> None:
    repo = tmp_path / "trunk-origin"
    repo.mkdir()
    (repo / "run.sh").write_text("echo trunk\n")
    commit_all(repo, message="first", branch="trunk")
    response = await client.post(
        "/api/v1/git-repositories", json={"name": "trunk", "url": str(repo)}, headers=alice[Role.ADMIN]
    )
    assert response.status_code == 201, response.text
    assert response.json()["branch"] == "trunk"
    synced = await client.post(f"/api/v1/git-repositories/{response.json()['id']}/sync", headers=alice[Role.ADMIN])
    assert synced.json()["commit"] == git(repo, "rev-parse", "HEAD")


async def test_update_checks_a_new_url_or_branch_at_the_remote(
    client: Client, alice: Caller, origin: Path, tmp_path: Path
) -> None:
    created = await _add(client, alice, origin)
    path = f"/api/v1/git-repositories/{created['id']}"
    git(origin, "branch", "release")
    for body, field in (({"branch": "nope"}, "branch"), ({"url": str(tmp_path / "elsewhere")}, "url")):
        refused = await client.put(path, json=body, headers=alice[Role.ADMIN])
        assert refused.status_code == 422, refused.text
        assert refused.json()["extra"]["errors"][0]["field"] == field
    shown = (await client.get(path, headers=alice[Role.ADMIN])).json()
    assert (shown["url"], shown["branch"]) == (str(origin), "main")  # unchanged
    moved = await client.put(path, json={"branch": "release", "name": "renamed"}, headers=alice[Role.ADMIN])
    assert moved.status_code == 200, moved.text
    assert (moved.json()["branch"], moved.json()["name"]) == ("release", "renamed")


def test_file_roots_are_comma_or_colon_separated_absolute_paths() -> None:
    settings = AppSettings(git_file_roots="/home/ops:/srv/git, /opt/repos")
    assert settings.file_roots() == (Path("/home/ops"), Path("/srv/git"), Path("/opt/repos"))
    assert settings.git_options().file_roots == settings.file_roots()
    with pytest.raises(ValueError, match="AHOP_GIT_FILE_ROOTS: 'repos' is not an absolute path"):
        AppSettings(git_file_roots="/srv/git,repos")
