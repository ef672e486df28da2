"""`/api/v1/credentials`: how the workers log in to the tenant's hosts. Secrets go in, never out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from pydantic import BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import IdPath, Page, PageNumber, PageSize, Timestamped, read_fields
from app.db.models import Role, TargetCredential
from app.services.target_credentials import CredentialChange, Secrets, TargetCredentials, fingerprint

SEALED = "Stored sealed with the server's keys; never returned."


class CredentialIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["ssh_key", "password"]
    secret: str = Field(min_length=1, description=f"The private key (OpenSSH or PEM) or the password. {SEALED}")
    passphrase: str | None = Field(default=None, min_length=1, description=f"An encrypted key's passphrase. {SEALED}")
    become_password: str | None = Field(
        default=None, min_length=1, description=f"The password `sudo` asks for, when it asks. {SEALED}"
    )


class CredentialUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    kind: Literal["ssh_key", "password"] | None = None
    secret: str | None = Field(default=None, min_length=1, description=f"A new key or password. {SEALED}")
    passphrase: str | None = Field(default=None, min_length=1, description=f"The new key's passphrase. {SEALED}")
    become_password: str | None = Field(default=None, min_length=1, description=SEALED)
    clear_become_password: bool = False


class CredentialOut(Timestamped):
    id: int
    name: str
    kind: str
    public_key: str | None = Field(description="An ssh_key credential's public key (`TYPE BASE64`).")
    fingerprint: str | None = Field(description="Its SHA256 fingerprint, as `ssh-keygen -l` shows it.")
    has_passphrase: bool
    has_become_password: bool
    hosts: int = Field(description="How many hosts log in with it.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: TargetCredential, hosts: int) -> Self:
        return read_fields(cls, row, fingerprint=fingerprint(row.public_key) if row.public_key else None, hosts=hosts)


async def _answer(target_credentials: TargetCredentials, row: TargetCredential) -> CredentialOut:
    """One credential with the count of hosts that log in with it."""
    return CredentialOut.of(row, await target_credentials.hosts_using(row.id))


class CredentialController(Controller):
    path = "/api/v1/credentials"
    tags = ["credentials"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post(
        "/",
        summary="Add a credential for logging in to hosts",
        description="A private key is read at once: one that is not a key, or an encrypted key without its right "
        "passphrase, answers 422 and nothing is written.",
    )
    async def create(
        self,
        data: JSONBody[CredentialIn],
        principal: NamedDependency[Principal],
        target_credentials: NamedDependency[TargetCredentials],
    ) -> CredentialOut:
        principal.require(Role.ADMIN)
        secrets = Secrets(data.kind, data.secret, data.passphrase, data.become_password)
        return CredentialOut.of(await target_credentials.create(principal.tenant_id, data.name, secrets), 0)

    @get("/", summary="List credentials (never their secrets)")
    async def index(
        self,
        principal: NamedDependency[Principal],
        target_credentials: NamedDependency[TargetCredentials],
        name: Annotated[
            str | None, QueryParameter(max_length=200, description="Only the credential of this name.")
        ] = None,
        page: PageNumber = 1,
        page_size: PageSize = 50,
    ) -> Page[CredentialOut]:
        rows, total = await target_credentials.page(principal.tenant_id, page, page_size, name)
        items = [CredentialOut.of(row, hosts) for row, hosts in rows]
        return Page(items=items, total=total, page=page, page_size=page_size)

    @get("/{credential_id:int}", summary="One credential (never its secrets)")
    async def show(
        self,
        credential_id: IdPath,
        principal: NamedDependency[Principal],
        target_credentials: NamedDependency[TargetCredentials],
    ) -> CredentialOut:
        return await _answer(target_credentials, await target_credentials.get(principal.tenant_id, credential_id))

    @put("/{credential_id:int}", summary="Rename a credential or replace its secrets")
    async def update(
        self,
        credential_id: IdPath,
        data: JSONBody[CredentialUpdate],
        principal: NamedDependency[Principal],
        target_credentials: NamedDependency[TargetCredentials],
    ) -> CredentialOut:
        principal.require(Role.ADMIN)
        change = CredentialChange(**data.model_dump())
        row = await target_credentials.change(principal.tenant_id, credential_id, change)
        return await _answer(target_credentials, row)

    @delete("/{credential_id:int}", summary="Delete a credential no host uses")
    async def remove(
        self,
        credential_id: IdPath,
        principal: NamedDependency[Principal],
        target_credentials: NamedDependency[TargetCredentials],
    ) -> None:
        principal.require(Role.ADMIN)
        await target_credentials.delete(principal.tenant_id, credential_id)
