"""`ahop repo …` and `ahop template …` against a real `ahop serve` process."""

from __future__ import annotations

import json
from pathlib import Path

from app.db.models import Role
from tests.support.cli import ahop, template_import
from tests.support.tenants import Caller, token_of


def test_repo_and_template_commands(api_url: str, alice: Caller, origin: Path) -> None:
    token = token_of(alice, Role.ADMIN)
    added = ahop(api_url, token, "repo", "add", "ops", str(origin), "--json")
    assert added.returncode == 0, added.stderr
    repository_id = json.loads(added.stdout)["id"]
    assert "ops" in ahop(api_url, token, "repo", "list").stdout

    imported = ahop(api_url, token, *template_import(repository_id, "cleanup", "Cleanup"), "--json")
    assert imported.returncode == 0, imported.stderr
    template = json.loads(imported.stdout)
    assert template["artifact"]["digest"].startswith("sha256:")

    table = ahop(api_url, token, "template", "list", "--search", "clean")
    assert table.returncode == 0
    assert "cleanup" in table.stdout
    synced = ahop(api_url, token, "template", "sync", str(template["id"]), "--json")
    assert (json.loads(synced.stdout)["changed"], json.loads(synced.stdout)["version"]) == (False, None)

    again = ahop(api_url, token, *template_import(repository_id, "other", "Other", entry="missing.sh"))
    assert again.returncode == 2
    assert "entry_file" in again.stderr


def test_client_without_a_token_or_api(api_url: str) -> None:
    assert ahop(api_url, None, "repo", "list").returncode == 2
    unreachable = ahop("http://127.0.0.1:1", "ahop_x", "repo", "list")
    assert unreachable.returncode == 3
    assert "did not answer" in unreachable.stderr
    unauthorized = ahop(api_url, "ahop_wrong", "repo", "list")
    assert (unauthorized.returncode, "401" in unauthorized.stderr) == (2, True)
