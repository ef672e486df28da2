"""Tenants as the API's callers: one per test, each with a bearer header for every role."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.db.engine import create_engine, create_session_factory
from app.db.models import Role
from app.services.tokens import create_tenant, issue_token


@dataclass(frozen=True)
class Caller:
    """A tenant and one bearer header per role."""

    tenant_id: str
    headers: dict[Role, dict[str, str]]

    def __getitem__(self, role: Role) -> dict[str, str]:
        return self.headers[role]


async def make_tenant(database_url: str) -> Caller:
    """A new tenant in the database, with a token issued for each role."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            tenant = await create_tenant(session, f"t-{secrets.token_hex(5)}")
            headers = {}
            for role in Role:
                issued = await issue_token(session, tenant.id, role)
                headers[role] = {"Authorization": f"Bearer {issued.secret}"}
        return Caller(str(tenant.id), headers)
    finally:
        await engine.dispose()


def token_of(caller: Caller, role: Role = Role.OPERATOR) -> str:
    """The caller's bearer secret for `role`, as `ahop` takes it in AHOP_TOKEN."""
    return caller[role]["Authorization"].removeprefix("Bearer ")
