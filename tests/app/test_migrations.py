"""The schema comes only from the migrations, and they go up and down cleanly."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

from app.db import migrate
from app.devstack.postgres import ensure_database
from app.devstack.stack import LocalStack
from tests.conftest import drop_database, with_database

SCHEMA = {
    "tenants",
    "api_tokens",
    "git_repositories",
    "blobs",
    "task_templates",
    "template_versions",
    "tree_digests",
    "tasks",
    "task_log_lines",
    "maintenance_runs",
}


@pytest.fixture
def empty_database(stack: LocalStack) -> Iterator[str]:
    server_url = stack.env["AHOP_DATABASE_URL"]
    name = f"ahop_migrations_{secrets.token_hex(4)}"
    ensure_database(server_url, name)
    yield with_database(server_url, name)
    asyncio.run(drop_database(server_url, name))


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await connection.close()


async def _execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def test_upgrade_creates_the_schema_and_downgrade_removes_it(empty_database: str) -> None:
    assert asyncio.run(_tables(empty_database)) == set()

    migrate.upgrade(empty_database)
    assert asyncio.run(_tables(empty_database)) == SCHEMA | {"alembic_version"}

    migrate.downgrade(empty_database, "base")
    assert asyncio.run(_tables(empty_database)) == {"alembic_version"}

    migrate.upgrade(empty_database)  # and up again: a downgrade leaves nothing in the way
    assert asyncio.run(_tables(empty_database)) == SCHEMA | {"alembic_version"}


def test_upgrade_twice_changes_nothing(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    migrate.upgrade(empty_database)
    assert asyncio.run(_tables(empty_database)) == SCHEMA | {"alembic_version"}


def test_the_database_refuses_an_unknown_role_and_a_plain_text_token(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    tenant = "INSERT INTO tenants (name) VALUES ('acme')"
    asyncio.run(_execute(empty_database, tenant))
    token = "INSERT INTO api_tokens (tenant_id, token_hash, role) SELECT id, '{hash}', '{role}' FROM tenants"
    with pytest.raises(asyncpg.CheckViolationError, match="api_tokens_role_known"):
        asyncio.run(_execute(empty_database, token.format(hash="a" * 64, role="root")))
    with pytest.raises(asyncpg.CheckViolationError, match="api_tokens_hash_form"):
        asyncio.run(_execute(empty_database, token.format(hash="ahop_secret", role="admin")))
