"""Git repositories of the tests: running git in them, committing changes, and adding them to a tenant."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from app.db.models import Role
from tests.support.api import Client
from tests.support.tenants import Caller


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as a fixed committer; its stdout, stripped."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def commit_all(repo: Path, *, message: str = "snapshot", branch: str = "main", stage: bool = True) -> str:
    """Commit the directory as it is (a repository on `branch` is made first if there is none); the new commit's
    sha."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", branch)
    if stage:
        git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, "--allow-empty")
    return git(repo, "rev-parse", "HEAD")


def repository_of(root: Path, files: dict[str, str], *, message: str = "first") -> Path:
    """A Git repository at `root` whose one commit holds `files` (path: text); `root`."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    commit_all(root, message=message)
    return root


def commit_new_content(origin: Path, path: str = "scripts/disk_cleanup") -> None:
    """A new commit that changes the directory's content (so its next import packs a new digest)."""
    (origin / path / "changes.txt").write_text(secrets.token_hex(16))
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "change")


async def add_repository(client: Client, caller: Caller, origin: Path, name: str = "ops") -> int:
    """Add `origin` as one of the caller's Git repositories, as an admin; its id."""
    response = await client.post(
        "/api/v1/git-repositories", json={"name": name, "url": str(origin)}, headers=caller[Role.ADMIN]
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])
