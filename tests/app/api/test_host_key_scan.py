"""Pinning host keys on request, against real OpenSSH servers: what a host offers is pinned when nothing was, shown
and not pinned when it differs from what was pinned, and pinned anyway only when the request says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.ssh_hosts import TargetHost
from tests.support.ssh_keys import key_pair, ssh_keygen_fingerprint
from tests.support.tenants import Caller


async def _host_of(client: Client, caller: Caller, target: TargetHost, **extra: object) -> dict[str, Any]:
    body = {"name": target.name, "address": target.address, "port": target.port, "user": target.user, **extra}
    answer = await client.post("/api/v1/hosts", json=body, headers=caller[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def _scan(client: Client, caller: Caller, host: dict[str, Any], **body: object) -> Any:
    return await client.post(f"/api/v1/hosts/{host['id']}/scan-keys", json=body, headers=caller[Role.ADMIN])


async def test_a_scan_pins_what_the_host_offers(client: Client, alice: Caller, ssh_hosts: list[TargetHost]) -> None:
    target = ssh_hosts[0]
    host = await _host_of(client, alice, target)
    looked = await _scan(client, alice, host, pin=False)
    assert looked.status_code == 201, looked.text
    assert (looked.json()["pinned"], looked.json()["host"]["host_keys"]) == (False, [])

    scanned = await _scan(client, alice, host)
    assert scanned.status_code == 201, scanned.text
    assert scanned.json()["pinned"] is True
    assert scanned.json()["changed"] is False
    found = {key["public"]: key["fingerprint"] for key in scanned.json()["found"]}
    assert found == {
        public: ssh_keygen_fingerprint(file)
        for public, file in zip(target.host_keys, target.host_key_files, strict=True)
    }
    shown = await client.get(f"/api/v1/hosts/{host['id']}", headers=alice[Role.VIEWER])
    assert {key["public"] for key in shown.json()["host_keys"]} == set(target.host_keys)
    again = await _scan(client, alice, host)
    assert (again.json()["pinned"], again.json()["changed"]) == (True, False)


async def test_keys_that_changed_are_shown_and_pinned_only_on_request(
    client: Client, alice: Caller, ssh_hosts: list[TargetHost], tmp_path: Path
) -> None:
    other = key_pair(tmp_path, "reinstalled")
    host = await _host_of(client, alice, ssh_hosts[1], host_keys=[other.public])
    scanned = await _scan(client, alice, host)
    assert scanned.status_code == 201, scanned.text
    assert (scanned.json()["changed"], scanned.json()["pinned"]) == (True, False)
    assert [key["fingerprint"] for key in scanned.json()["pinned_before"]] == [other.fingerprint]
    kept = await client.get(f"/api/v1/hosts/{host['id']}", headers=alice[Role.VIEWER])
    assert [key["public"] for key in kept.json()["host_keys"]] == [other.public]

    replaced = await _scan(client, alice, host, replace=True)
    assert (replaced.json()["changed"], replaced.json()["pinned"]) == (True, True)
    assert {key["public"] for key in replaced.json()["host"]["host_keys"]} == set(ssh_hosts[1].host_keys)


async def test_a_host_that_cannot_be_reached_is_named(client: Client, alice: Caller, ssh_host: TargetHost) -> None:
    host = await _host_of(client, alice, ssh_host)
    ssh_host.stop()
    refused = await _scan(client, alice, host, timeout=5)
    assert refused.status_code == 502, refused.text
    assert f"host {ssh_host.name!r}" in refused.json()["detail"]
    assert f"{ssh_host.address}:{ssh_host.port}" in refused.json()["detail"]
    shown = await client.get(f"/api/v1/hosts/{host['id']}", headers=alice[Role.VIEWER])
    assert shown.json()["host_keys"] == []
