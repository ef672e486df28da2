"""Raw SQL against a test database, for checks and set-ups that the API does not offer."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.support.tenants import Caller


async def sql(database_url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


async def rows(database_url: str, caller: Caller) -> dict[str, int]:
    """How many repositories, templates and tasks the tenant has."""
    counts = {}
    for table in ("git_repositories", "task_templates", "tasks"):
        found = await sql(database_url, f"SELECT count(*) FROM {table} WHERE tenant_id = $1::uuid", caller.tenant_id)
        counts[table] = int(found[0][0])
    return counts
