"""A task's inventory snapshot: the hosts named and labelled, each once, as they are then; hosts that could not be
logged in to are refused with what to do."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import create_engine, create_session_factory
from app.db.models import Role
from app.errors import InvalidInput
from app.services.target_snapshot import snapshot_targets
from tests.support.api import Client
from tests.support.ssh_keys import key_pair
from tests.support.tenants import Caller


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as opened:
            yield opened
    finally:
        await engine.dispose()


async def _inventory(client: Client, caller: Caller, tmp_path: Path) -> dict[str, dict[str, Any]]:
    await client.post(
        "/api/v1/credentials", json={"name": "ops", "kind": "password", "secret": "pw"}, headers=caller[Role.ADMIN]
    )
    key = key_pair(tmp_path, "host")
    made = {}
    for name, labels, extra in (
        ("web-01", ["web"], {"credential": "ops", "host_keys": [key.public]}),
        ("web-02", ["web", "prod"], {"credential": "ops", "host_keys": [key.public]}),
        ("db-01", ["db"], {"credential": "ops", "host_keys": [key.public], "variables": {"pg": 15}}),
        ("new-01", ["new"], {"credential": "ops"}),
        ("bare-01", ["bare"], {"host_keys": [key.public]}),
    ):
        answer = await client.post(
            "/api/v1/hosts",
            json={"name": name, "address": f"{name}.example.org", "labels": labels, **extra},
            headers=caller[Role.ADMIN],
        )
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()
    return made


async def test_hosts_and_labels_become_one_snapshot_by_name(
    client: Client, alice: Caller, tmp_path: Path, session: AsyncSession
) -> None:
    made = await _inventory(client, alice, tmp_path)
    tenant = uuid.UUID(alice.tenant_id)
    snapshot = await snapshot_targets(session, tenant, [made["db-01"]["id"], "web-02"], ["web"])
    assert [entry["name"] for entry in snapshot] == ["db-01", "web-01", "web-02"]
    db = snapshot[0]
    assert {key: db[key] for key in ("host_id", "address", "port", "user", "labels", "variables")} == {
        "host_id": made["db-01"]["id"],
        "address": "db-01.example.org",
        "port": 22,
        "user": "root",
        "labels": ["db"],
        "variables": {"pg": 15},
    }
    assert db["fingerprints"] == [key["fingerprint"] for key in made["db-01"]["host_keys"]]
    assert db["credential_id"] == made["db-01"]["credential_id"]

    await client.put(f"/api/v1/hosts/{made['db-01']['id']}", json={"port": 2222}, headers=alice[Role.ADMIN])
    assert snapshot[0]["port"] == 22, "a snapshot is what the host was"


async def test_every_wrong_host_and_label_is_named(
    client: Client, alice: Caller, bob: Caller, tmp_path: Path, session: AsyncSession
) -> None:
    made = await _inventory(client, alice, tmp_path)
    with pytest.raises(InvalidInput) as refused:
        await snapshot_targets(session, uuid.UUID(alice.tenant_id), ["web-01", "nope", 10**12], ["web", "gone"])
    assert refused.value.fields == {
        "hosts": f"no host {10**12}, 'nope' in the inventory",
        "labels": "no host has the label 'gone'",
    }
    with pytest.raises(InvalidInput) as unready:
        await snapshot_targets(session, uuid.UUID(alice.tenant_id), [], ["new", "bare"])
    assert unready.value.fields == {
        "hosts": "host 'bare-01' has no credential (ahop host update bare-01 --credential NAME); "
        "host 'new-01' has no pinned host keys (ahop host scan-keys new-01)"
    }
    with pytest.raises(InvalidInput) as theirs:
        await snapshot_targets(session, uuid.UUID(bob.tenant_id), [made["web-01"]["id"], "web-01"], [])
    assert "no host" in theirs.value.fields["hosts"], "another tenant's hosts are not found"
