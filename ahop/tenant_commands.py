"""`ahop tenant …` and `ahop token …`: tenants and API tokens, straight in the database.

These talk to Postgres directly (AHOP_DATABASE_URL): they are how the first `system` token comes to exist.
A tenant is named by its name or its id. Exit codes are those of `ahop.exit_codes`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from ahop.console import echo_json, echo_table, fail, load_settings
from ahop.exit_codes import EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db.models import Tenant

ResultT = TypeVar("ResultT")
ROLES = ("viewer", "operator", "admin", "system")


def _in_transaction(work: Callable[[AsyncSession], Awaitable[ResultT]]) -> ResultT:
    """Run `work` in one transaction on the configured database. A domain error (an unknown tenant, a name taken)
    goes up to `ahop.cli.main`, which maps it; a database that does not answer exits 3 here."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    from app.db.engine import create_engine, create_session_factory
    from app.settings import AppSettings

    settings = load_settings(AppSettings)

    async def run() -> ResultT:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with create_session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (OSError, DBAPIError) as exc:
        fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)


@click.group()
def tenant() -> None:
    """Tenants."""


@tenant.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print {tenant_id, token} as JSON.")
def tenant_create(name: str, as_json: bool) -> None:
    """Create tenant NAME and print its id and a new admin token (shown once)."""
    from app.db.models import Role
    from app.services.tokens import IssuedToken, create_tenant, issue_token

    async def work(session: AsyncSession) -> IssuedToken:
        created = await create_tenant(session, name)
        return await issue_token(session, created.id, Role.ADMIN, description=f"first admin of {name}")

    issued = _in_transaction(work)
    if as_json:
        echo_json({"tenant_id": str(issued.tenant_id), "token": issued.secret}, indent=None)
    else:
        click.echo(f"tenant {name}: {issued.tenant_id}\nadmin token (shown once): {issued.secret}")


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the tenants as JSON.")
def tenant_list(as_json: bool) -> None:
    """List tenants: id, name, when each was created, and how many tokens it holds that still work."""
    from app.services.tokens import list_tenants

    async def work(session: AsyncSession) -> list[dict[str, object]]:
        return [
            {
                "tenant_id": str(row.tenant.id),
                "name": row.tenant.name,
                "created_at": row.tenant.created_at.isoformat(),
                "valid_tokens": row.valid_tokens,
            }
            for row in await list_tenants(session)
        ]

    rows = _in_transaction(work)
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["tenant_id", "name", "created_at", "valid_tokens"])


async def _tenant(session: AsyncSession, ref: str) -> Tenant:
    from app.services.tokens import find_tenant

    return await find_tenant(session, ref)


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--tenant", "tenant_ref", required=True, help="The tenant's name or id.")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--expires-in", type=click.IntRange(min=1), help="Days until the token expires (default: never).")
@click.option("--description", default="", help="What the token is for.")
@click.option("--json", "as_json", is_flag=True)
def token_create(tenant_ref: str, role: str, expires_in: int | None, description: str, as_json: bool) -> None:
    """Create a token and print it (shown once)."""
    from datetime import timedelta

    from app.db.models import Role
    from app.services.tokens import IssuedToken, issue_token

    async def work(session: AsyncSession) -> IssuedToken:
        tenant = await _tenant(session, tenant_ref)
        lifetime = timedelta(days=expires_in) if expires_in else None
        return await issue_token(session, tenant.id, Role(role), description=description, expires_in=lifetime)

    issued = _in_transaction(work)
    if as_json:
        echo_json(
            {
                "token_id": str(issued.token_id),
                "tenant_id": str(issued.tenant_id),
                "role": role,
                "token": issued.secret,
            },
            indent=None,
        )
    else:
        click.echo(f"token {issued.token_id} ({role}) (shown once): {issued.secret}")


@token.command("list")
@click.option("--tenant", "tenant_ref", help="Only this tenant's tokens (its name or id).")
@click.option("--json", "as_json", is_flag=True)
def token_list(tenant_ref: str | None, as_json: bool) -> None:
    """List tokens (ids, roles, dates; never secrets)."""
    from app.services.tokens import list_tokens

    async def work(session: AsyncSession) -> list[dict[str, str | None]]:
        def iso(value: object) -> str | None:
            return value.isoformat() if value is not None else None  # type: ignore[attr-defined]

        return [
            {
                "token_id": str(row.id),
                "tenant_id": str(row.tenant_id),
                "role": row.role,
                "description": row.description,
                "created_at": iso(row.created_at),
                "expires_at": iso(row.expires_at),
                "revoked_at": iso(row.revoked_at),
            }
            for row in await list_tokens(session, (await _tenant(session, tenant_ref)).id if tenant_ref else None)
        ]

    rows = _in_transaction(work)
    if as_json:
        echo_json(rows, indent=None)
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else f"expires {row['expires_at']}" if row["expires_at"] else "valid"
        click.echo(f"{row['token_id']}  {row['role']:<8}  tenant {row['tenant_id']}  {state}  {row['description']}")


@token.command("revoke")
@click.argument("token_id", type=click.UUID)
def token_revoke(token_id: uuid.UUID) -> None:
    """Revoke a token: from now on it answers 401."""
    from app.services.tokens import revoke_token

    async def work(session: AsyncSession) -> None:
        await revoke_token(session, token_id)

    _in_transaction(work)
    click.echo(f"token {token_id} revoked")
