"""The inventory through the API: hosts with their fields checked, labels, pinned host keys, credentials by name,
imports of real Ansible inventories (read by Ansible's own `ansible-inventory`), and tenant isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client, add_as_the_only_writer, errors
from tests.support.ssh_keys import key_pair
from tests.support.tenants import Caller

ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


async def _add(client: Client, caller: Caller, **body: object) -> dict[str, Any]:
    answer = await client.post("/api/v1/hosts", json=body, headers=caller[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _listing(inventory: Path) -> dict[str, Any]:
    listed = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(inventory), "--list"], check=True, capture_output=True, text=True
    )
    return dict(json.loads(listed.stdout))


async def test_a_host_with_its_labels_variables_credential_and_pinned_keys(
    client: Client, alice: Caller, tmp_path: Path
) -> None:
    credential = await client.post(
        "/api/v1/credentials", json={"name": "ops", "kind": "password", "secret": "pw"}, headers=alice[Role.ADMIN]
    )
    host_key, other_key = key_pair(tmp_path, "host"), key_pair(tmp_path, "other", kind="rsa")
    created = await _add(
        client,
        alice,
        name="web-01",
        address="10.0.0.1",
        port=2222,
        user="deploy",
        labels=["web", "prod", "web"],
        variables={"http_port": 8080},
        credential="ops",
        host_keys=[host_key.public_file.read_text(), f"[10.0.0.1]:2222 {other_key.public}"],
    )
    assert {key: created[key] for key in ("name", "address", "port", "user", "labels", "variables")} == {
        "name": "web-01",
        "address": "10.0.0.1",
        "port": 2222,
        "user": "deploy",
        "labels": ["prod", "web"],
        "variables": {"http_port": 8080},
    }
    assert (created["credential_id"], created["credential"]) == (credential.json()["id"], "ops")
    assert [(key["public"], key["fingerprint"]) for key in created["host_keys"]] == [
        (host_key.public, host_key.fingerprint),
        (other_key.public, other_key.fingerprint),
    ]
    assert [key["algorithm"] for key in created["host_keys"]] == ["ssh-ed25519", "ssh-rsa"]
    shown = await client.get(f"/api/v1/hosts/{created['id']}", headers=alice[Role.VIEWER])
    assert shown.json() == created


async def test_hosts_are_listed_by_name_and_filtered_by_labels(client: Client, alice: Caller) -> None:
    for name, labels in (("db-01", ["db", "prod"]), ("web-02", ["web", "prod"]), ("web-01", ["web", "staging"])):
        await _add(client, alice, name=name, address=f"{name}.example.org", labels=labels)

    async def names(query: str) -> list[str]:
        answer = await client.get(f"/api/v1/hosts{query}", headers=alice[Role.VIEWER])
        assert answer.status_code == 200, answer.text
        return [host["name"] for host in answer.json()["items"]]

    assert await names("") == ["db-01", "web-01", "web-02"]
    assert await names("?label=web") == ["web-01", "web-02"]
    assert await names("?label=web&label=prod") == ["web-02"]
    assert await names("?label=nothing") == []


async def test_a_change_keeps_what_it_does_not_name(client: Client, alice: Caller, tmp_path: Path) -> None:
    await client.post(
        "/api/v1/credentials", json={"name": "ops", "kind": "password", "secret": "pw"}, headers=alice[Role.ADMIN]
    )
    key = key_pair(tmp_path, "host")
    created = await _add(
        client, alice, name="app", address="10.0.0.5", labels=["a"], credential="ops", host_keys=[key.public]
    )
    url = f"/api/v1/hosts/{created['id']}"
    moved = await client.put(url, json={"address": "10.0.0.6", "labels": ["b"]}, headers=alice[Role.ADMIN])
    assert moved.status_code == 200, moved.text
    assert (moved.json()["address"], moved.json()["labels"], moved.json()["credential"]) == ("10.0.0.6", ["b"], "ops")
    assert [key["public"] for key in moved.json()["host_keys"]] == [key.public]
    unset = await client.put(url, json={"credential": None, "host_keys": []}, headers=alice[Role.ADMIN])
    assert (unset.json()["credential"], unset.json()["host_keys"]) == (None, [])


async def test_wrong_fields_are_named_and_nothing_is_written(client: Client, alice: Caller) -> None:
    wrong: dict[str, tuple[dict[str, Any], str]] = {
        "address": ({"address": "not an address!"}, "address"),
        "port": ({"port": 0}, "port"),
        "label": ({"labels": ["-web"]}, "labels"),
        "user": ({"user": "a b"}, "user"),
        "name": ({"name": "web 01"}, "name"),
        "a secret variable": ({"variables": {"ansible_password": "pw"}}, "variables"),
        "a connection variable": ({"variables": {"ansible_connection": "local"}}, "variables"),
        "a field as a variable": ({"variables": {"ansible_host": "10.0.0.9"}}, "variables"),
        "a bad variable name": ({"variables": {"no-dashes": 1}}, "variables"),
        "a host key": ({"host_keys": ["ssh-ed25519 not-base64"]}, "host_keys"),
        "a credential": ({"credential": "nobody"}, "credential"),
    }
    for what, (change, field) in wrong.items():
        body = {"name": "web-01", "address": "10.0.0.1", **change}
        answer = await client.post("/api/v1/hosts", json=body, headers=alice[Role.ADMIN])
        assert answer.status_code == 422, (what, answer.text)
        assert any(name.startswith(field) for name in errors(answer)), (what, answer.text)
    secret = await client.post(
        "/api/v1/hosts",
        json={"name": "web-01", "address": "10.0.0.1", "variables": {"ansible_password": "pw"}},
        headers=alice[Role.ADMIN],
    )
    assert "keep it in a credential" in secret.json()["detail"]
    assert (await client.get("/api/v1/hosts", headers=alice[Role.VIEWER])).json()["total"] == 0
    await _add(client, alice, name="web-01", address="10.0.0.1")
    again = await client.post(
        "/api/v1/hosts", json={"name": "web-01", "address": "10.0.0.2"}, headers=alice[Role.ADMIN]
    )
    assert again.status_code == 409, again.text


INI_INVENTORY = """\
[web]
web[01:03].example.org ansible_user=deploy

[db]
db-01 ansible_host=10.0.0.21 ansible_port=2200 ansible_connection=ssh

[prod:children]
web
db

[prod:vars]
region=eu-west
"""

YAML_INVENTORY = """\
all:
  hosts:
    bastion:
      ansible_host: 10.0.0.1
  children:
    monitoring:
      hosts:
        grafana-01:
          ansible_host: 10.0.0.31
          retention_days: 30
      vars:
        team: observability
"""


async def test_an_ini_inventory_imports_with_groups_as_labels(client: Client, alice: Caller, tmp_path: Path) -> None:
    await client.post(
        "/api/v1/credentials", json={"name": "ops", "kind": "password", "secret": "pw"}, headers=alice[Role.ADMIN]
    )
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(INI_INVENTORY)
    answer = await client.post(
        "/api/v1/hosts/import",
        json={"inventory": _listing(inventory), "credential": "ops", "default_user": "admin"},
        headers=alice[Role.ADMIN],
    )
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "created": ["db-01", "web01.example.org", "web02.example.org", "web03.example.org"],
        "updated": [],
        "dropped": {"db-01": ["ansible_connection"]},
    }
    hosts = {
        host["name"]: host for host in (await client.get("/api/v1/hosts", headers=alice[Role.VIEWER])).json()["items"]
    }
    assert {name: (h["address"], h["port"], h["user"], h["labels"]) for name, h in hosts.items()} == {
        "db-01": ("10.0.0.21", 2200, "admin", ["db", "prod"]),
        "web01.example.org": ("web01.example.org", 22, "deploy", ["prod", "web"]),
        "web02.example.org": ("web02.example.org", 22, "deploy", ["prod", "web"]),
        "web03.example.org": ("web03.example.org", 22, "deploy", ["prod", "web"]),
    }
    assert {host["variables"]["region"] for host in hosts.values()} == {"eu-west"}
    assert {host["credential"] for host in hosts.values()} == {"ops"}


async def test_a_yaml_inventory_imports_and_an_import_again_updates(
    client: Client, alice: Caller, tmp_path: Path
) -> None:
    key = key_pair(tmp_path, "grafana")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(YAML_INVENTORY)
    first = await client.post(
        "/api/v1/hosts/import", json={"inventory": _listing(inventory)}, headers=alice[Role.ADMIN]
    )
    assert first.status_code == 201, first.text
    assert first.json()["created"] == ["bastion", "grafana-01"]
    grafana = next(
        host
        for host in (await client.get("/api/v1/hosts", headers=alice[Role.VIEWER])).json()["items"]
        if host["name"] == "grafana-01"
    )
    assert (grafana["address"], grafana["user"], grafana["labels"]) == ("10.0.0.31", "root", ["monitoring"])
    assert grafana["variables"] == {"retention_days": 30, "team": "observability"}
    await client.put(f"/api/v1/hosts/{grafana['id']}", json={"host_keys": [key.public]}, headers=alice[Role.ADMIN])

    inventory.write_text(YAML_INVENTORY.replace("10.0.0.31", "10.0.0.32"))
    again = await client.post(
        "/api/v1/hosts/import", json={"inventory": _listing(inventory)}, headers=alice[Role.ADMIN]
    )
    assert (again.json()["created"], again.json()["updated"]) == ([], ["bastion", "grafana-01"])
    moved = (await client.get(f"/api/v1/hosts/{grafana['id']}", headers=alice[Role.VIEWER])).json()
    assert moved["address"] == "10.0.0.32"
    assert [key["public"] for key in moved["host_keys"]] == [key.public], "an import keeps the pinned keys"


async def test_an_inventory_with_a_secret_imports_nothing(client: Client, alice: Caller, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[web]\nweb-01\nweb-02 ansible_password=hunter2\n")
    answer = await client.post(
        "/api/v1/hosts/import", json={"inventory": _listing(inventory)}, headers=alice[Role.ADMIN]
    )
    assert answer.status_code == 422, answer.text
    assert "'web-02' has ansible_password" in answer.json()["detail"]
    assert "hunter2" not in answer.text
    assert (await client.get("/api/v1/hosts", headers=alice[Role.VIEWER])).json()["total"] == 0
    not_a_listing = await client.post(
        "/api/v1/hosts/import", json={"inventory": {"_meta": []}}, headers=alice[Role.ADMIN]
    )
    assert not_a_listing.status_code == 422
    assert "ansible-inventory" in not_a_listing.json()["detail"]


async def test_only_admins_write_hosts_and_tenants_see_only_their_own(
    client: Client, alice: Caller, bob: Caller
) -> None:
    body = {"name": "web-01", "address": "10.0.0.1"}
    created = await add_as_the_only_writer(client, "/api/v1/hosts", body, {"address": "10.0.0.9"}, alice, bob)
    url = f"/api/v1/hosts/{created['id']}"
    assert (await client.post(f"{url}/scan-keys", json={}, headers=bob[Role.ADMIN])).status_code == 404
    assert (await client.get("/api/v1/hosts", headers=bob[Role.VIEWER])).json()["total"] == 0
    theirs = await client.post("/api/v1/hosts", json=body, headers=bob[Role.ADMIN])
    assert theirs.status_code == 201, "names are unique per tenant"
