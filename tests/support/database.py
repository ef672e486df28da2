"""Databases of the tests: new ones of a test's own on the session's server, dropped after it, and raw SQL for
checks and set-ups that the API does not offer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from app.db import migrate
from app.devstack.postgres import ensure_database
from app.devstack.stack import LocalStack
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


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def drop_database(server_url: str, name: str) -> None:
    """Drop the database `name`, however many connections it still has."""
    connection = await asyncpg.connect(server_url.replace("+asyncpg", ""))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextmanager
def new_database(stack: LocalStack, prefix: str, *, migrated: bool = False) -> Iterator[str]:
    """A new database on the session's Postgres server (with the migrations run, if `migrated`), dropped at the
    end; its URL."""
    server_url = stack.env["AHOP_DATABASE_URL"]
    name = f"{prefix}_{secrets.token_hex(5)}"
    ensure_database(server_url, name)
    url = with_database(server_url, name)
    if migrated:
        migrate.upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(drop_database(server_url, name))


@asynccontextmanager
async def new_migrated_database(stack: LocalStack, prefix: str) -> AsyncIterator[str]:
    """`new_database` with the migrations run, for a test's event loop: the launcher and the migrations run event
    loops of their own, so they run in a thread."""
    server_url = stack.env["AHOP_DATABASE_URL"]
    name = f"{prefix}_{secrets.token_hex(5)}"
    await asyncio.to_thread(ensure_database, server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(migrate.upgrade, url)
    try:
        yield url
    finally:
        await drop_database(server_url, name)
