"""`/api/v1/hosts`: the tenant's inventory of target hosts, their pinned SSH host keys, and Ansible imports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from pydantic import BaseModel, Field

from app.api.auth import Principal
from app.api.schemas import IdPath, Page, PageNumber, PageSize, Timestamped, read_fields
from app.db.models import Role
from app.inventory.ansible import read_ansible_inventory
from app.inventory.fields import HostFields
from app.services.host_keys import HostKeyScanner, KeyComparison
from app.services.hosts import KEEP, HostChange, Hosts, HostView, Imported
from targets.host_keys import HostKey

CredentialRef = Annotated[
    int | str | None, Field(description="The credential that logs in to the host: its id or its name.")
]
HOST_KEYS = "Pinned SSH host keys, as in a .pub or known_hosts file: a host that shows another key is refused."


class HostIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=253, description="An IP address or a DNS name.")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default="root", min_length=1, max_length=64, description="The login user.")
    labels: list[str] = Field(default_factory=list, max_length=100)
    variables: dict[str, Any] = Field(default_factory=dict, description="Host variables (for Ansible).")
    credential: CredentialRef = None
    host_keys: list[str] = Field(default_factory=list, max_length=20, description=HOST_KEYS)


class HostUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = Field(default=None, min_length=1, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = Field(default=None, min_length=1, max_length=64)
    labels: list[str] | None = Field(default=None, max_length=100)
    variables: dict[str, Any] | None = None
    credential: CredentialRef = Field(default=None, description="null removes the host's credential.")
    host_keys: list[str] | None = Field(default=None, max_length=20, description=HOST_KEYS)


class HostKeyOut(BaseModel):
    algorithm: str
    public: str
    fingerprint: str

    @classmethod
    def all_of(cls, keys: list[HostKey]) -> list[Self]:
        return [cls(algorithm=key.algorithm, public=key.public, fingerprint=key.fingerprint) for key in keys]


class HostOut(Timestamped):
    id: int
    name: str
    address: str
    port: int
    user: str
    labels: list[str]
    variables: dict[str, Any]
    credential_id: int | None
    credential: str | None = Field(description="The credential's name.")
    host_keys: list[HostKeyOut]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: HostView) -> Self:
        return read_fields(
            cls, view.host, user=view.host.username, credential=view.credential_name, host_keys=view.keys
        )


class ImportIn(BaseModel):
    inventory: dict[str, Any] = Field(description="What `ansible-inventory -i FILE --list` prints.")
    credential: CredentialRef = Field(default=None, description="Given to every host imported.")
    default_user: str = Field(default="root", min_length=1, max_length=64, description="For hosts without one.")


class ImportOut(BaseModel):
    created: list[str]
    updated: list[str]
    dropped: dict[str, list[str]] = Field(
        description="Per host, the connection variables left out: ahop connects the host itself."
    )

    @classmethod
    def of(cls, imported: Imported) -> Self:
        return cls(created=imported.created, updated=imported.updated, dropped=imported.dropped)


class ScanIn(BaseModel):
    pin: bool = Field(default=True, description="false: only show what the host offers.")
    replace: bool = Field(
        default=False, description="Pin the keys found even though they differ from those pinned (a reinstalled host)."
    )
    timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds for the whole scan.")


class ScanOut(BaseModel):
    host: HostOut
    found: list[HostKeyOut]
    pinned_before: list[HostKeyOut]
    changed: bool = Field(description="Keys had been pinned, and the host offers others.")
    pinned: bool = Field(description="The keys found are now the host's pinned keys.")

    @classmethod
    def of(cls, view: HostView, comparison: KeyComparison, pinned: bool) -> Self:
        return cls(
            host=HostOut.of(view),
            found=HostKeyOut.all_of(comparison.found),
            pinned_before=HostKeyOut.all_of(comparison.before),
            changed=comparison.changed,
            pinned=pinned,
        )


LabelQuery = Annotated[
    list[str] | None, QueryParameter(description="Only hosts with every label given (repeat it for more).")
]

NameQuery = Annotated[str | None, QueryParameter(max_length=200, description="Only the host of this name.")]


class HostController(Controller):
    path = "/api/v1/hosts"
    tags = ["hosts"]  # noqa: RUF012  (Litestar reads this class attribute)

    @post("/", summary="Add a host to the inventory")
    async def create(
        self, data: JSONBody[HostIn], principal: NamedDependency[Principal], hosts: NamedDependency[Hosts]
    ) -> HostOut:
        principal.require(Role.ADMIN)
        fields = HostFields(data.name, data.address, data.port, data.user, data.labels, data.variables)
        return HostOut.of(await hosts.create(principal.tenant_id, fields, data.credential, data.host_keys))

    @get("/", summary="List hosts, by name")
    async def index(
        self,
        principal: NamedDependency[Principal],
        hosts: NamedDependency[Hosts],
        label: LabelQuery = None,
        name: NameQuery = None,
        page: PageNumber = 1,
        page_size: PageSize = 50,
    ) -> Page[HostOut]:
        views, total = await hosts.page(principal.tenant_id, page, page_size, label, name)
        return Page(items=[HostOut.of(view) for view in views], total=total, page=page, page_size=page_size)

    @get("/{host_id:int}", summary="One host")
    async def show(
        self, host_id: IdPath, principal: NamedDependency[Principal], hosts: NamedDependency[Hosts]
    ) -> HostOut:
        return HostOut.of(await hosts.get(principal.tenant_id, host_id))

    @put("/{host_id:int}", summary="Change a host; what is not given stays as it is")
    async def update(
        self,
        host_id: IdPath,
        data: JSONBody[HostUpdate],
        principal: NamedDependency[Principal],
        hosts: NamedDependency[Hosts],
    ) -> HostOut:
        principal.require(Role.ADMIN)
        given = data.model_dump(exclude={"credential"})
        credential = data.credential if "credential" in data.model_fields_set else KEEP
        return HostOut.of(await hosts.change(principal.tenant_id, host_id, HostChange(**given, credential=credential)))

    @delete("/{host_id:int}", summary="Remove a host from the inventory")
    async def remove(
        self, host_id: IdPath, principal: NamedDependency[Principal], hosts: NamedDependency[Hosts]
    ) -> None:
        principal.require(Role.ADMIN)
        await hosts.delete(principal.tenant_id, host_id)

    @post(
        "/import",
        summary="Add or update hosts from an Ansible inventory",
        description="The body holds what `ansible-inventory -i FILE --list` prints (INI or YAML, ranges and group "
        "variables resolved by Ansible). Groups become labels. All hosts are written, or none.",
    )
    async def import_inventory(
        self, data: JSONBody[ImportIn], principal: NamedDependency[Principal], hosts: NamedDependency[Hosts]
    ) -> ImportOut:
        principal.require(Role.ADMIN)
        inventory = read_ansible_inventory(data.inventory, default_user=data.default_user)
        return ImportOut.of(await hosts.import_inventory(principal.tenant_id, inventory, data.credential))

    @post(
        "/{host_id:int}/scan-keys",
        summary="Fetch the host's SSH host keys and pin them",
        description="The server connects to the host and reads the keys it offers. Keys differing from those "
        "pinned are only shown (changed: true) unless replace is given; nothing is ever pinned without this "
        "request.",
    )
    async def scan_keys(
        self,
        host_id: IdPath,
        data: JSONBody[ScanIn],
        principal: NamedDependency[Principal],
        host_key_scanner: NamedDependency[HostKeyScanner],
    ) -> ScanOut:
        principal.require(Role.ADMIN)
        view, comparison, pinned = await host_key_scanner.scan(
            principal.tenant_id, host_id, pin=data.pin, replace=data.replace, bound=data.timeout
        )
        return ScanOut.of(view, comparison, pinned)
