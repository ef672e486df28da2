"""The hosts of a tenant's inventory: their records, their credential, their pinned SSH host keys, and importing an
Ansible inventory into them in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Host, TargetCredential
from app.errors import Conflict, InvalidInput, NotFound
from app.inventory.ansible import ReadInventory
from app.inventory.fields import HostFields, check_host
from app.services.named_rows import commit_named
from app.services.target_credentials import TargetCredentials
from targets.host_keys import HostKey, HostKeyRefused, parse_host_key

KEEP = object()
"""A change's credential when the request does not name one: the host keeps its own."""


@dataclass(frozen=True)
class HostView:
    """A host with the name of its credential, as answers show it."""

    host: Host
    credential_name: str | None

    @property
    def keys(self) -> list[HostKey]:
        return [parse_host_key(line) for line in self.host.host_keys]


@dataclass(frozen=True)
class HostChange:
    """What a client changes; None leaves a field as it is. `credential`: an id or a name, None to remove it, or
    KEEP. `host_keys` replaces the pinned keys (an empty list unpins them)."""

    name: str | None = None
    address: str | None = None
    port: int | None = None
    user: str | None = None
    labels: list[str] | None = None
    variables: dict[str, object] | None = None
    credential: object = KEEP
    host_keys: list[str] | None = None


@dataclass(frozen=True)
class Imported:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)


def pinned(lines: list[str]) -> list[str]:
    """Host keys as stored (`TYPE BASE64`, de-duplicated, in the order given); `InvalidInput` naming the wrong one."""
    keys: list[str] = []
    for index, line in enumerate(lines):
        try:
            key = parse_host_key(line)
        except HostKeyRefused as exc:
            raise InvalidInput(f"host key {index + 1}: {exc}", {f"host_keys.{index}": str(exc)}) from None
        if key.public not in keys:
            keys.append(key.public)
    return keys


class Hosts:
    def __init__(self, session: AsyncSession, credentials: TargetCredentials) -> None:
        self.session = session
        self.credentials = credentials

    async def get(self, tenant_id: uuid.UUID, host_id: int) -> HostView:
        return await self._view(await self._row(tenant_id, host_id))

    async def _row(self, tenant_id: uuid.UUID, host_id: int) -> Host:
        row = await self.session.scalar(select(Host).where(Host.id == host_id, Host.tenant_id == tenant_id))
        if row is None:
            raise NotFound(f"no host {host_id}")
        return row

    async def _view(self, row: Host) -> HostView:
        name = None
        if row.credential_id is not None:
            name = await self.session.scalar(
                select(TargetCredential.name).where(TargetCredential.id == row.credential_id)
            )
        return HostView(row, name)

    async def page(
        self, tenant_id: uuid.UUID, page: int, page_size: int, labels: list[str] | None = None, name: str | None = None
    ) -> tuple[list[HostView], int]:
        """Hosts by name; with `labels`, only those that have every one of them; with `name`, that one."""
        where = [Host.tenant_id == tenant_id]
        if name is not None:
            where.append(Host.name == name)
        if labels:
            where.append(Host.labels.contains(sorted(set(labels))))
        total = await self.session.scalar(select(func.count()).select_from(Host).where(*where)) or 0
        rows = await self.session.execute(
            select(Host, TargetCredential.name)
            .outerjoin(TargetCredential, TargetCredential.id == Host.credential_id)
            .where(*where)
            .order_by(Host.name)
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return [HostView(host, name) for host, name in rows], total

    async def create(
        self, tenant_id: uuid.UUID, fields: HostFields, credential: int | str | None, host_keys: list[str]
    ) -> HostView:
        checked = check_host(fields)
        row = Host(tenant_id=tenant_id, host_keys=pinned(host_keys))
        _apply(row, checked)
        if credential is not None:
            row.credential_id = (await self.credentials.named(tenant_id, credential)).id
        self.session.add(row)
        return await self._commit(row)

    async def change(self, tenant_id: uuid.UUID, host_id: int, change: HostChange) -> HostView:
        row = await self._row(tenant_id, host_id)
        fields = HostFields(
            name=row.name if change.name is None else change.name,
            address=row.address if change.address is None else change.address,
            port=row.port if change.port is None else change.port,
            user=row.username if change.user is None else change.user,
            labels=row.labels if change.labels is None else change.labels,
            variables=row.variables if change.variables is None else change.variables,
        )
        _apply(row, check_host(fields))
        if change.host_keys is not None:
            row.host_keys = pinned(change.host_keys)
        if change.credential is None:
            row.credential_id = None
        elif change.credential is not KEEP:
            reference = change.credential
            assert isinstance(reference, int | str)
            row.credential_id = (await self.credentials.named(tenant_id, reference)).id
        row.updated_at = datetime.now(UTC)
        return await self._commit(row)

    async def pin(self, tenant_id: uuid.UUID, host_id: int, keys: list[HostKey]) -> HostView:
        row = await self._row(tenant_id, host_id)
        row.host_keys = [key.public for key in keys]
        row.updated_at = datetime.now(UTC)
        return await self._commit(row)

    async def delete(self, tenant_id: uuid.UUID, host_id: int) -> None:
        row = await self._row(tenant_id, host_id)
        await self.session.delete(row)
        await self.session.commit()

    async def import_inventory(
        self, tenant_id: uuid.UUID, inventory: ReadInventory, credential: int | str | None
    ) -> Imported:
        """Add the inventory's hosts that are new and update those of the same name (address, port, user, labels
        and variables as the inventory has them; their pinned keys kept; their credential replaced only when one is
        given): all of them, or none when one fails."""
        credential_id = None if credential is None else (await self.credentials.named(tenant_id, credential)).id
        names = [host.name for host in inventory.hosts]
        existing = {
            row.name: row
            for row in await self.session.scalars(
                select(Host).where(Host.tenant_id == tenant_id, Host.name.in_(names)).with_for_update()
            )
        }
        now = datetime.now(UTC)
        imported = Imported(dropped=inventory.dropped)
        for fields in inventory.hosts:
            row = existing.get(fields.name)
            if row is None:
                row = Host(tenant_id=tenant_id, host_keys=[])
                self.session.add(row)
                imported.created.append(fields.name)
            else:
                row.updated_at = now
                imported.updated.append(fields.name)
            _apply(row, fields)
            if credential_id is not None:
                row.credential_id = credential_id
        try:
            await self.session.commit()
        except DatabaseIntegrityError as exc:
            await self.session.rollback()
            raise Conflict("another change to these hosts came first: import again") from exc
        return imported

    async def _commit(self, row: Host) -> HostView:
        return await self._view(await commit_named(self.session, row, "host"))


def _apply(row: Host, fields: HostFields) -> None:
    row.name, row.address, row.port, row.username = fields.name, fields.address, fields.port, fields.user
    row.labels, row.variables = fields.labels, fields.variables
