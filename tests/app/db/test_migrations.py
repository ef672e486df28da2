"""The schema comes only from the migrations, and they go up and down cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from app.db import migrate
from app.devstack.stack import LocalStack
from tests.support.database import new_database
from tests.support.schema import SCHEMA


@pytest.fixture
def empty_database(stack: LocalStack) -> Iterator[str]:
    with new_database(stack, "ahop_migrations") as url:
        yield url


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


async def _fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


def test_upgrading_a_database_with_templates_and_task_output(empty_database: str) -> None:
    """0005: a version recorded without parameters (imports then dropped the scanned ones) is `scanned`, one with
    parameters `manual`; 0006: older output lines keep no attempt, so no row is rewritten."""
    migrate.upgrade(empty_database, "0004")
    digest = "a" * 64
    asyncio.run(
        _execute(
            empty_database,
            f"""
        INSERT INTO tenants (name) VALUES ('acme');
        INSERT INTO blobs (digest, tar_size, zst_size, zst_sha256, files) VALUES ('{digest}', 10, 5, '{digest}', 1);
        INSERT INTO task_templates (tenant_id, code, name, import_state)
            SELECT id, 'cleanup', 'Cleanup', 'pending' FROM tenants;
        INSERT INTO template_versions (template_id, version, digest, script_type, entry_file, parameters)
            SELECT id, 1, '{digest}', 'shell', 'run.sh', '[]'::jsonb FROM task_templates;
        INSERT INTO template_versions (template_id, version, digest, script_type, entry_file, parameters)
            SELECT id, 2, '{digest}', 'shell', 'run.sh', '[{{"name": "days"}}]'::jsonb FROM task_templates;
        INSERT INTO tasks (tenant_id, template_code, version, digest, pool, timeout, status, started_at, finished_at)
            SELECT id, 'cleanup', 1, '{digest}', 'default', 60, 'success', now(), now() FROM tenants;
        INSERT INTO task_log_lines (task_id, seq, stream, line) SELECT id, 1, 'stdout', 'done' FROM tasks;
    """,
        )
    )

    migrate.upgrade(empty_database)
    sources = asyncio.run(_fetch(empty_database, "SELECT version, parameters_source FROM template_versions ORDER BY 1"))
    assert sources == [(1, "scanned"), (2, "manual")]
    assert asyncio.run(_fetch(empty_database, "SELECT seq, attempt FROM task_log_lines")) == [(1, None)]
    migrate.downgrade(empty_database, "0004")
    assert asyncio.run(_fetch(empty_database, "SELECT count(*) FROM template_versions")) == [(2,)]
