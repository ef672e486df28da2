"""`ahop tenant` and `ahop token`: how the first tokens come to exist, straight in the database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from app.db.engine import create_engine, create_session_factory
from app.services.tokens import find_valid_token


def ahop(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AHOP_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "ahop", *args], capture_output=True, text=True, env=env, check=False)


async def _valid(database_url: str, secret: str) -> bool:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session:
            return await find_valid_token(session, secret) is not None
    finally:
        await engine.dispose()


def test_tenant_and_token_lifecycle(database_url: str) -> None:
    created = ahop(database_url, "tenant", "create", "acme-ops", "--json")
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert tenant["token"].startswith("ahop_")
    assert asyncio.run(_valid(database_url, tenant["token"]))

    viewer = ahop(
        database_url,
        "token",
        "create",
        "--tenant",
        tenant["tenant_id"],
        "--role",
        "viewer",
        "--expires-in",
        "30",
        "--json",
    )
    assert viewer.returncode == 0, viewer.stderr
    issued = json.loads(viewer.stdout)
    assert issued["role"] == "viewer"

    listed = json.loads(ahop(database_url, "token", "list", "--tenant", tenant["tenant_id"], "--json").stdout)
    assert {row["role"] for row in listed} == {"admin", "viewer"}
    assert all("token" not in row and "token_hash" not in row for row in listed)  # secrets never listed
    assert next(row for row in listed if row["role"] == "viewer")["expires_at"] is not None

    revoked = ahop(database_url, "token", "revoke", issued["token_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert not asyncio.run(_valid(database_url, issued["token"]))
    assert asyncio.run(_valid(database_url, tenant["token"]))


def test_bad_input_exits_2_naming_the_problem(database_url: str) -> None:
    assert ahop(database_url, "tenant", "create", "dup-tenant").returncode == 0
    duplicate = ahop(database_url, "tenant", "create", "dup-tenant")
    assert (duplicate.returncode, "already exists" in duplicate.stderr) == (2, True)
    malformed = ahop(database_url, "tenant", "create", "Bad Name!")
    assert (malformed.returncode, "lowercase letters" in malformed.stderr) == (2, True)
    unknown = ahop(
        database_url, "token", "create", "--tenant", "00000000-0000-0000-0000-000000000000", "--role", "admin"
    )
    assert (unknown.returncode, "no tenant '00000000-0000-0000-0000-000000000000'" in unknown.stderr) == (2, True)
    role = ahop(database_url, "token", "create", "--tenant", "00000000-0000-0000-0000-000000000000", "--role", "root")
    assert role.returncode == 2
    assert "root" in role.stderr


def test_database_down_exits_3() -> None:
    result = ahop("postgresql://postgres@127.0.0.1:1/none", "tenant", "create", "whatever")
    assert result.returncode == 3
    assert "database unavailable" in result.stderr


def test_tenant_list_and_tokens_by_tenant_name(database_url: str) -> None:
    created = json.loads(ahop(database_url, "tenant", "create", "named-ops", "--json").stdout)
    by_name = ahop(database_url, "token", "create", "--tenant", "named-ops", "--role", "operator", "--json")
    assert by_name.returncode == 0, by_name.stderr
    issued = json.loads(by_name.stdout)
    assert (issued["tenant_id"], issued["role"]) == (created["tenant_id"], "operator")
    assert asyncio.run(_valid(database_url, issued["token"]))
    listed = json.loads(ahop(database_url, "token", "list", "--tenant", "named-ops", "--json").stdout)
    assert {row["role"] for row in listed} == {"admin", "operator"}

    tenants = ahop(database_url, "tenant", "list", "--json")
    assert tenants.returncode == 0, tenants.stderr
    row = next(row for row in json.loads(tenants.stdout) if row["name"] == "named-ops")
    assert (row["tenant_id"], row["valid_tokens"]) == (created["tenant_id"], 2)
    ahop(database_url, "token", "revoke", issued["token_id"])
    table = ahop(database_url, "tenant", "list")
    header, *rows = table.stdout.splitlines()
    assert header.split("\t") == ["tenant_id", "name", "created_at", "valid_tokens"]
    cells = next(line.split("\t") for line in rows if "\tnamed-ops\t" in line)
    assert (cells[0], cells[3]) == (created["tenant_id"], "1")

    unknown = ahop(database_url, "token", "create", "--tenant", "no-such-tenant", "--role", "viewer")
    assert (unknown.returncode, unknown.stderr.startswith("ahop: no tenant 'no-such-tenant'")) == (2, True)
