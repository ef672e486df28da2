"""Bearer tokens (DESIGN §7): who is calling, for which tenant, with which role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Role
from app.errors import Forbidden
from app.services.tokens import find_valid_token

_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2, Role.SYSTEM: 3}


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    role: Role
    token_id: uuid.UUID

    def require(self, minimum: Role) -> None:
        """Raise `Forbidden` unless this caller's role is at least `minimum`."""
        if _RANK[self.role] < _RANK[minimum]:
            raise Forbidden(f"this needs the {minimum.value} role; the token has {self.role.value}")


async def provide_session(
    session_factory: NamedDependency[async_sessionmaker[AsyncSession]],
) -> AsyncIterator[AsyncSession]:
    """One session per request; use cases open their own transactions on it."""
    async with session_factory() as session:
        yield session


async def provide_principal(request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession]) -> Principal:
    """The caller of an /api/v1 route: a valid, unrevoked, unexpired bearer token, else 401."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise NotAuthorizedException("send Authorization: Bearer <token>")
    row = await find_valid_token(db_session, secret.strip())
    if row is None:
        await db_session.rollback()
        raise NotAuthorizedException("the token is unknown, revoked or expired")
    principal = Principal(tenant_id=row.tenant_id, role=Role(row.role), token_id=row.id)
    await db_session.rollback()  # end the read transaction: use cases start their own
    return principal
