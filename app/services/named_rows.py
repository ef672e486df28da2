"""Rows a tenant names (repositories, hosts, credentials): a name taken twice is a conflict, not a database error."""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict


class Named(Protocol):
    name: str


RowT = TypeVar("RowT", bound=Named)


async def commit_named(session: AsyncSession, row: RowT, what: str) -> RowT:
    """Commit, and answer `row` as stored; `Conflict` when its tenant has another `what` of its name."""
    name = row.name  # read now: after the rollback, reading an attribute of a stored row would query again
    try:
        await session.commit()
    except DatabaseIntegrityError as exc:
        await session.rollback()
        raise Conflict(f"a {what} named {name!r} already exists") from exc
    await session.refresh(row)
    return row
