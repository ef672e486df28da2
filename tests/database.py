"""Raw SQL against a test database, for checks and set-ups that the API does not offer."""

from __future__ import annotations

from typing import Any

import asyncpg


async def sql(database_url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()
