"""Credentials that log in to target hosts: an SSH private key (and its passphrase) or a password, and an optional
become (sudo) password.

The secrets are sealed together with the server's keys (`CredentialBox`, as repository credentials are) and never
leave the server in the clear: no answer, log or metric holds them. A private key is read when it is given, so a key
that is not one, or an encrypted key without its right passphrase, is refused then and not at a task's first login;
its public half is kept in the clear, so an operator can tell which key a credential holds (by its fingerprint).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncssh
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Host, TargetCredential
from app.errors import Conflict, InvalidInput, NotFound
from app.services.credentials import CredentialBox
from app.services.named_rows import commit_named

KINDS = ("ssh_key", "password")
MAX_SECRET_BYTES = 16 << 10


@dataclass(frozen=True)
class Secrets:
    """What a credential holds. `secret` is the private key (OpenSSH or PEM) or the password."""

    kind: str
    secret: str
    passphrase: str | None = None
    become_password: str | None = None

    def sealable(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, opened: dict[str, Any]) -> Secrets:
        return cls(opened["kind"], opened["secret"], opened.get("passphrase"), opened.get("become_password"))


@dataclass(frozen=True)
class CredentialChange:
    """What a client changes; None leaves a field as it is. A new `secret` replaces the key or password (and its
    passphrase); `become_password` replaces that one alone, `clear_become_password` removes it."""

    name: str | None = None
    kind: str | None = None
    secret: str | None = None
    passphrase: str | None = None
    become_password: str | None = None
    clear_become_password: bool = False


def public_key_of(secrets: Secrets) -> str | None:
    """The OpenSSH public line (`TYPE BASE64`) of an ssh_key credential's key, None for a password; `InvalidInput`
    when the key cannot be read with the passphrase given."""
    for name, value in (("secret", secrets.secret), ("passphrase", secrets.passphrase)):
        if value is not None and len(value.encode()) > MAX_SECRET_BYTES:
            raise InvalidInput(f"the {name} is over {MAX_SECRET_BYTES >> 10} KiB", {name: "too long"})
    if secrets.kind not in KINDS:
        raise InvalidInput(f"kind {secrets.kind!r} is not one of {', '.join(KINDS)}", {"kind": " or ".join(KINDS)})
    if not secrets.secret:
        what = "private key" if secrets.kind == "ssh_key" else "password"
        raise InvalidInput(f"an {secrets.kind} credential needs its {what}", {"secret": f"the {what}"})
    if secrets.kind == "password":
        if secrets.passphrase is not None:
            raise InvalidInput("a password credential has no passphrase", {"passphrase": "only for an ssh_key"})
        return None
    encrypted = _is_encrypted(secrets.secret)
    if encrypted and secrets.passphrase is None:
        raise InvalidInput("the private key is encrypted: give its passphrase", {"passphrase": "the key's passphrase"})
    if secrets.passphrase is not None and not encrypted:
        raise InvalidInput("the private key is not encrypted: give no passphrase", {"passphrase": "not needed"})
    try:
        key = asyncssh.import_private_key(secrets.secret, secrets.passphrase)
    except asyncssh.KeyEncryptionError:
        raise InvalidInput("the passphrase does not open the private key", {"passphrase": "wrong"}) from None
    except (asyncssh.KeyImportError, ValueError):
        raise InvalidInput(
            "the secret is not a private key: expected an OpenSSH or PEM private key (the file ssh-keygen writes)",
            {"secret": "an SSH private key"},
        ) from None
    line = key.export_public_key("openssh").decode()
    return " ".join(line.split()[:2])


def _is_encrypted(private_key: str) -> bool:
    """Whether the key needs a passphrase: asyncssh refuses an encrypted key read without one with this message
    (a KeyImportError, as for a key it cannot read at all)."""
    try:
        asyncssh.import_private_key(private_key)
    except asyncssh.KeyImportError as exc:
        return str(exc).startswith(_NEEDS_PASSPHRASE)
    return False


_NEEDS_PASSPHRASE = "Passphrase must be specified"  # noqa: S105  (asyncssh's message, not a password)


def fingerprint(public_key: str) -> str:
    """`SHA256:…`, as `ssh-keygen -l` shows it."""
    return str(asyncssh.import_public_key(public_key).get_fingerprint("sha256"))


class TargetCredentials:
    def __init__(self, session: AsyncSession, box: CredentialBox) -> None:
        self.session = session
        self.box = box

    async def get(self, tenant_id: uuid.UUID, credential_id: int) -> TargetCredential:
        row = await self.session.scalar(
            select(TargetCredential).where(
                TargetCredential.id == credential_id, TargetCredential.tenant_id == tenant_id
            )
        )
        if row is None:
            raise NotFound(f"no credential {credential_id}")
        return row

    async def named(self, tenant_id: uuid.UUID, reference: int | str) -> TargetCredential:
        """A credential by its id or its name; `InvalidInput` when there is none (it is named by a request body)."""
        where = TargetCredential.id == reference if isinstance(reference, int) else TargetCredential.name == reference
        row = await self.session.scalar(select(TargetCredential).where(where, TargetCredential.tenant_id == tenant_id))
        if row is None:
            raise InvalidInput(f"no credential {reference!r}", {"credential": "no such credential"})
        return row

    async def page(
        self, tenant_id: uuid.UUID, page: int, page_size: int, name: str | None = None
    ) -> tuple[list[tuple[TargetCredential, int]], int]:
        """Credentials with how many hosts use each; with `name`, that one."""
        where = TargetCredential.tenant_id == tenant_id
        if name is not None:
            where = where & (TargetCredential.name == name)
        total = await self.session.scalar(select(func.count()).select_from(TargetCredential).where(where)) or 0
        used = select(func.count()).where(Host.credential_id == TargetCredential.id).scalar_subquery()
        rows = await self.session.execute(
            select(TargetCredential, used)
            .where(where)
            .order_by(TargetCredential.id)
            .offset((page - 1) * page_size)
            .limit(page_size)
        )
        return [(row, count) for row, count in rows], total

    async def hosts_using(self, credential_id: int) -> int:
        return await self.session.scalar(select(func.count()).where(Host.credential_id == credential_id)) or 0

    async def create(self, tenant_id: uuid.UUID, name: str, secrets: Secrets) -> TargetCredential:
        row = TargetCredential(tenant_id=tenant_id, name=name)
        self._seal(row, secrets)
        self.session.add(row)
        return await self._commit(row)

    async def change(self, tenant_id: uuid.UUID, credential_id: int, change: CredentialChange) -> TargetCredential:
        row = await self.get(tenant_id, credential_id)
        if change.secret is None and change.kind is not None and change.kind != row.kind:
            raise InvalidInput("a new kind needs its new secret", {"secret": "the key or password of the new kind"})
        if change.secret is None and change.passphrase is not None:
            raise InvalidInput("a passphrase is given with the key it opens", {"secret": "the private key"})
        if change.become_password is not None and change.clear_become_password:
            raise InvalidInput(
                "give a become_password or clear_become_password, not both", {"become_password": "one of the two"}
            )
        if change.name is not None:
            row.name = change.name
        if change.secret is not None or change.become_password is not None or change.clear_become_password:
            current = Secrets.of(self.box.open_json(row.sealed))
            if change.secret is not None:
                current = Secrets(change.kind or row.kind, change.secret, change.passphrase, current.become_password)
            if change.become_password is not None or change.clear_become_password:
                current = Secrets(current.kind, current.secret, current.passphrase, change.become_password)
            self._seal(row, current)
        row.updated_at = datetime.now(UTC)
        return await self._commit(row)

    async def delete(self, tenant_id: uuid.UUID, credential_id: int) -> None:
        row = await self.get(tenant_id, credential_id)
        names = list(
            await self.session.scalars(
                select(Host.name).where(Host.credential_id == row.id).order_by(Host.name).limit(5)
            )
        )
        if names:
            count = await self.hosts_using(row.id)
            more = f" and {count - len(names)} more" if count > len(names) else ""
            raise Conflict(
                f"credential {row.name!r} is used by {count} host(s) ({', '.join(names)}{more}): "
                "give them another credential first"
            )
        await self.session.delete(row)
        await self.session.commit()

    def _seal(self, row: TargetCredential, secrets: Secrets) -> None:
        if secrets.become_password is not None and not secrets.become_password:
            raise InvalidInput("the become_password is empty", {"become_password": "not empty, or not given"})
        row.public_key = public_key_of(secrets)
        row.kind = secrets.kind
        row.sealed = self.box.seal_json(secrets.sealable())
        row.has_passphrase = secrets.passphrase is not None
        row.has_become_password = secrets.become_password is not None

    async def _commit(self, row: TargetCredential) -> TargetCredential:
        return await commit_named(self.session, row, "credential")
