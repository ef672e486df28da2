"""API tokens: minting, hashing and the tenant bootstrap that `ahop dev` and `ahop tenant create` share."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ApiToken, Role, Tenant

TOKEN_PREFIX = "ahop_"  # noqa: S105  (a prefix that makes leaked tokens easy to spot, not a secret)


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so a plain SHA-256 is enough (no KDF needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class IssuedToken:
    """A token as shown once to whoever created it."""

    tenant_id: uuid.UUID
    token_id: uuid.UUID
    role: Role
    secret: str


async def issue_token(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    role: Role,
    *,
    description: str = "",
    expires_in: timedelta | None = None,
) -> IssuedToken:
    """Store a new token for the tenant and return its secret (the only time it is seen)."""
    secret = new_token_secret()
    expires_at = datetime.now(UTC) + expires_in if expires_in else None
    row = ApiToken(
        tenant_id=tenant_id,
        token_hash=hash_token(secret),
        role=role.value,
        description=description,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return IssuedToken(tenant_id=tenant_id, token_id=row.id, role=role, secret=secret)


async def find_valid_token(session: AsyncSession, secret: str) -> ApiToken | None:
    """The token row for a secret, unless it is unknown, revoked or expired."""
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        return None
    return row


async def get_or_create_tenant(session: AsyncSession, name: str) -> Tenant:
    """The tenant called `name`, created if it does not exist yet."""
    tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        await session.flush()
    return tenant


async def ensure_admin_token(session: AsyncSession, tenant_name: str, known_secret: str | None) -> IssuedToken:
    """Return `known_secret` if it is still a valid admin token of the tenant, else issue a new one."""
    tenant = await get_or_create_tenant(session, tenant_name)
    if known_secret:
        row = await find_valid_token(session, known_secret)
        if row is not None and row.tenant_id == tenant.id and row.role == Role.ADMIN:
            return IssuedToken(tenant_id=tenant.id, token_id=row.id, role=Role.ADMIN, secret=known_secret)
    return await issue_token(session, tenant.id, Role.ADMIN, description="created by ahop dev")
