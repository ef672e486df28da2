"""The shout template: one script that greets, writes to stderr, naps and exits with the code it is given."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from app.db.models import Role
from tests.support.repositories import commit_all
from tests.support.tenants import Caller

SHOUT_SH = """#!/bin/bash
echo "hello $AHOP_PARAM_WHO"
echo "to stderr" >&2
sleep "$AHOP_PARAM_NAP"
exit "$AHOP_PARAM_CODE"
"""


SHOUT_PARAMS = [
    {"name": "who", "type": "text", "required": True},
    {"name": "code", "type": "integer", "default": 0},
    {"name": "nap", "type": "integer", "default": 0},
]


def import_shout(url: str, caller: Caller, root: Path, codes: tuple[str, ...], pool: str = "default") -> dict[str, int]:
    """Templates of one script, each under its own code (for the workers of `pool`); their ids by code."""
    repo = root / "shout-origin"
    (repo / "shout").mkdir(parents=True)
    (repo / "shout" / "run.sh").write_text(SHOUT_SH)
    (repo / "shout" / "NOTES.md").write_text(f"{secrets.token_hex(8)}\n")  # unique content: the tree cache is shared
    commit_all(repo, message="shout")
    headers = caller[Role.ADMIN]
    added = httpx.post(f"{url}/api/v1/git-repositories", json={"name": "shout", "url": str(repo)}, headers=headers)
    assert added.status_code == 201, added.text
    ids = {}
    for code in codes:
        body = {
            "name": code,
            "code": code,
            "script_type": "shell",
            "entry_file": "run.sh",
            "original_path": "shout",
            "repository_id": added.json()["id"],
            "parameters": SHOUT_PARAMS,
            "pool": pool,
        }
        imported = httpx.post(f"{url}/api/v1/task-templates", json=body, headers=headers, timeout=60)
        assert imported.status_code == 201, imported.text
        ids[code] = int(imported.json()["id"])
    return ids
