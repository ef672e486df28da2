"""Templates imported through the API: the request body of a shell template, and importing one as an admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.repositories import add_repository
from tests.support.tenants import Caller

TASK_PARAMETERS: list[dict[str, Any]] = [
    {"name": "days", "type": "integer", "required": True, "validation": {"min": 1}},
    {"name": "mode", "type": "select", "options": ["fast", "safe"], "default": "safe"},
    {"name": "token", "type": "password"},
    {"name": "verbose", "type": "boolean", "default": False},
]
"""A parameter of each kind a task's operator fills in: required, chosen, secret, defaulted."""


def bare_body(repository_id: int, **overrides: Any) -> dict[str, Any]:
    """The import request of the origin's `scripts/disk_cleanup` as a shell template with only the fields an import
    needs (its parameters, then, as the scan reads them), and `overrides`."""
    return {
        "name": "Disk cleanup",
        "code": "disk_cleanup",
        "script_type": "shell",
        "entry_file": "cleanup.sh",
        "repository_id": repository_id,
        "original_path": "scripts/disk_cleanup",
        **overrides,
    }


def body(repository_id: int, **overrides: Any) -> dict[str, Any]:
    """The import request of the origin's `scripts/disk_cleanup` as a shell template, with `overrides`."""
    described = {
        "description": "frees space",
        "parameters": [{"name": "days", "type": "integer", "required": True, "validation": {"min": 1}}],
        "timeout": 600,
    }
    return bare_body(repository_id, **{**described, **overrides})


async def import_template(
    client: Client,
    caller: Caller,
    origin: Path,
    code: str = "disk_cleanup",
    parameters: list[dict[str, Any]] | None = None,
    *,
    repository_id: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Import a directory of `origin` as template `code` (with TASK_PARAMETERS unless `parameters` says otherwise),
    adding `origin` as a repository of its own unless `repository_id` names one; the response's JSON."""
    if repository_id is None:
        repository_id = await add_repository(client, caller, origin, name=f"ops-{code}")
    payload = body(repository_id, code=code, parameters=TASK_PARAMETERS if parameters is None else parameters, **fields)
    response = await client.post("/api/v1/task-templates", json=payload, headers=caller[Role.ADMIN])
    assert response.status_code == 201, response.text
    return dict(response.json())


async def assert_refused_on_import_and_update(
    client: Client, caller: Caller, repository_id: int, url: str, cases: list[tuple[dict[str, Any], str]]
) -> None:
    """Each change of `cases`, in an import (as template `other`) and in an update of the template at `url`, is
    a 422 naming its field (the one given, or one under it)."""
    for change, field in cases:
        for method, target, payload in (
            ("POST", "/api/v1/task-templates", body(repository_id, code="other", **change)),
            ("PUT", url, change),
        ):
            response = await client.request(method, target, json=payload, headers=caller[Role.ADMIN])
            assert response.status_code == 422, (method, change, response.text)
            fields = {error["field"] for error in response.json()["extra"]["errors"]}
            assert any(name == field or name.startswith(field + ".") for name in fields), (method, change, fields)
