"""Pinning a host's SSH host keys on request: the server reads what the host offers, shows it with fingerprints,
and pins it only when nothing was pinned before, or when the request says the host was reinstalled (`replace`).
A host's key is never trusted on first use silently: a task's login refuses a host whose keys are not pinned."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.errors import Upstream
from app.services.hosts import Hosts, HostView
from targets.host_keys import HostKey, ScanFailed, parse_host_key, scan_host_keys


@dataclass(frozen=True)
class KeyComparison:
    found: list[HostKey]
    before: list[HostKey]

    @property
    def changed(self) -> bool:
        """Keys were pinned, and the host offers others."""
        return bool(self.before) and {key.public for key in self.found} != {key.public for key in self.before}


class HostKeyScanner:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts

    async def scan(
        self, tenant_id: uuid.UUID, host_id: int, *, pin: bool, replace: bool, bound: float
    ) -> tuple[HostView, KeyComparison, bool]:
        """The host, what it offers against what was pinned, and whether the keys found are now pinned."""
        view = await self.hosts.get(tenant_id, host_id)
        name, address, port = view.host.name, view.host.address, view.host.port  # read before the rollback
        before = [parse_host_key(line) for line in view.host.host_keys]
        await self.hosts.session.rollback()  # no transaction held open across the network
        try:
            found = await scan_host_keys(address, port, timeout=bound)
        except ScanFailed as exc:
            raise Upstream(f"host {name!r}: {exc}") from None
        comparison = KeyComparison(found, before)
        if not pin or (comparison.changed and not replace) or not found:
            return await self.hosts.get(tenant_id, host_id), comparison, False
        return await self.hosts.pin(tenant_id, host_id, found), comparison, True
