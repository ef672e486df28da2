"""`ahop repo …` against a real `ahop serve` process: the remote checked at once, credentials from files, update and
delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app.db.models import Role
from tests.support.cli import ahop
from tests.support.repositories import commit_all, git
from tests.support.tenants import Caller, token_of


def _repositories(url: str, token: str) -> list[dict[str, object]]:
    listed = ahop(url, token, "repo", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout)["items"])


def test_repo_add_refuses_a_remote_it_cannot_use_at_once(
    api_url: str,
    alice: Caller,
    origin: Path,
    tmp_path: Path,
) -> None:
    token = token_of(alice, Role.ADMIN)
    cases = [
        (("repo", "add", "ops", str(tmp_path)), "is not a Git repository or cannot be reached"),
        (("repo", "add", "ops", "https://127.0.0.1:1/ops.git"), "url: not a Git repository, or not reachable"),
        (("repo", "add", "ops", str(origin), "--branch", "release"), "branch: no branch 'release' at the remote"),
        (("repo", "add", "ops", "ftp://example.com/ops.git"), "scheme 'ftp' is not allowed"),
    ]
    for args, message in cases:
        refused = ahop(api_url, token, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)
        assert refused.stderr.count("ahop:") == 1, refused.stderr  # the error, once
    assert _repositories(api_url, token) == []


def test_repo_add_uses_the_default_branch_and_takes_credentials_from_a_file(
    api_url: str,
    alice: Caller,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "trunk-origin"
    repo.mkdir()
    (repo / "run.sh").write_text("echo trunk\n")
    commit_all(repo, message="first", branch="trunk")
    token = token_of(alice, Role.ADMIN)
    secret_file = tmp_path / "token"
    secret_file.write_text("ghp_notonthecommandline\n")
    added = ahop(api_url, token, "repo", "add", "ops", str(repo), "--token-file", str(secret_file), "--json")
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert (created["branch"], created["auth_kind"]) == ("trunk", "https_token")
    assert "ghp_notonthecommandline" not in added.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("AHOP_")}
    env.update(AHOP_API_URL=api_url, AHOP_TOKEN=token)
    with_key = subprocess.run(
        [sys.executable, "-m", "ahop", "repo", "add", "ops-ssh", str(repo), "--ssh-key-file", "-", "--json"],
        input="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert with_key.returncode == 0, with_key.stderr
    assert json.loads(with_key.stdout)["auth_kind"] == "ssh_key"

    empty = tmp_path / "empty"
    empty.write_text("")
    refused = ahop(api_url, token, "repo", "add", "ops-x", str(repo), "--token-file", str(empty))
    assert (refused.returncode, f"{empty} holds no secret" in refused.stderr) == (2, True), refused.stderr


def test_repo_update_and_delete(api_url: str, alice: Caller, origin: Path, tmp_path: Path) -> None:
    token = token_of(alice, Role.ADMIN)
    added = ahop(api_url, token, "repo", "add", "ops", str(origin), "--json")
    repository_id = str(json.loads(added.stdout)["id"])
    git(origin, "branch", "release")

    missing = ahop(api_url, token, "repo", "update", repository_id, "--branch", "nope")
    assert (missing.returncode, "no branch 'nope'" in missing.stderr) == (2, True), missing.stderr
    nothing = ahop(api_url, token, "repo", "update", repository_id)
    assert (nothing.returncode, "nothing to change" in nothing.stderr) == (2, True)
    secret_file = tmp_path / "token"
    secret_file.write_text("ghp_rotated")
    updated = ahop(
        api_url,
        token,
        "repo",
        "update",
        repository_id,
        "--name",
        "ops-renamed",
        "--branch",
        "release",
        "--token-file",
        str(secret_file),
        "--json",
    )
    assert updated.returncode == 0, updated.stderr
    row = json.loads(updated.stdout)
    assert (row["name"], row["branch"], row["auth_kind"]) == ("ops-renamed", "release", "https_token")
    cleared = ahop(api_url, token, "repo", "update", repository_id, "--clear-credentials", "--json")
    assert json.loads(cleared.stdout)["auth_kind"] == "none"

    deleted = ahop(api_url, token, "repo", "delete", repository_id)
    assert (deleted.returncode, deleted.stdout) == (0, f"repository {repository_id} deleted\n")
    assert _repositories(api_url, token) == []
    again = ahop(api_url, token, "repo", "delete", repository_id)
    assert (again.returncode, f"no repository {repository_id}" in again.stderr) == (2, True), again.stderr
