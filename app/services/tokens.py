"""API tokens: minting, hashing and the tenant bootstrap that `ahop dev` and `ahop tenant create` share."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ApiToken, Role, Tenant
from app.errors import Conflict, InvalidInput, NotFound

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


TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


async def create_tenant(session: AsyncSession, name: str) -> Tenant:
    """A new tenant; its name is lowercase letters, digits, `_`, `.` and `-`, and unique."""
    if not TENANT_NAME.fullmatch(name):
        raise InvalidInput(
            f"tenant name {name!r} is not allowed: use 1-100 lowercase letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            {"name": "expected [a-z0-9][a-z0-9_.-]*"},
        )
    if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"a tenant named {name!r} already exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id}")
    return tenant


async def find_tenant(session: AsyncSession, ref: str) -> Tenant:
    """The tenant named `ref`, or whose id `ref` is; `NotFound` naming `ref` otherwise."""
    try:
        tenant_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        tenant_id = None
    if tenant_id is not None:
        tenant = await session.get(Tenant, tenant_id)
    else:
        tenant = await session.scalar(select(Tenant).where(Tenant.name == ref))
    if tenant is None:
        raise NotFound(f"no tenant {ref!r} (give its name or id; `ahop tenant list` shows both)")
    return tenant


@dataclass(frozen=True)
class TenantSummary:
    tenant: Tenant
    valid_tokens: int


async def list_tenants(session: AsyncSession) -> list[TenantSummary]:
    """Every tenant, by name, with how many of its tokens still work (neither revoked nor expired)."""
    valid = (
        select(func.count())
        .select_from(ApiToken)
        .where(
            ApiToken.tenant_id == Tenant.id,
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
        )
        .scalar_subquery()
    )
    rows = await session.execute(select(Tenant, valid).order_by(Tenant.name))
    return [TenantSummary(tenant, count) for tenant, count in rows.tuples()]


async def list_tokens(session: AsyncSession, tenant_id: uuid.UUID | None = None) -> list[ApiToken]:
    """Tokens (never their secrets), newest first; of one tenant when `tenant_id` is given."""
    query = select(ApiToken).order_by(ApiToken.created_at.desc())
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    return list(await session.scalars(query))


async def revoke_token(session: AsyncSession, token_id: uuid.UUID) -> None:
    """Revoke a token from now on; revoking twice keeps the first time."""
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id)
        .values(revoked_at=func.coalesce(ApiToken.revoked_at, func.now()))
        .returning(ApiToken.id)
    )
    if result.first() is None:
        raise NotFound(f"no token with id {token_id}")


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
