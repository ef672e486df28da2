"""An inventory made through the API: credentials that log in and hosts with pinned keys, to aim target tasks at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.db.models import Role
from tests.support.api import Client
from tests.support.ssh_keys import KeyPair, key_pair
from tests.support.tenants import Caller

PASSWORD = "pw-of-the-hosts-1"
BECOME_PASSWORD = "sudo-of-the-hosts-2"


@dataclass(frozen=True)
class Inventory:
    """The hosts made (their answers by name), the login key of credential `key`, the host key they all pin."""

    hosts: dict[str, dict[str, Any]]
    credentials: dict[str, dict[str, Any]]
    login_key: KeyPair
    host_key: KeyPair

    def secrets(self) -> list[str]:
        """Every secret the credentials hold: none may appear in an answer, a job's bytes or a log."""
        return [self.login_key.private.strip(), PASSWORD, BECOME_PASSWORD]


async def add_credential(client: Client, caller: Caller, **body: Any) -> dict[str, Any]:
    answer = await client.post("/api/v1/credentials", json=body, headers=caller[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def add_host(client: Client, caller: Caller, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "address": f"{name}.example.org", **fields}
    answer = await client.post("/api/v1/hosts", json=body, headers=caller[Role.ADMIN])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def make_inventory(client: Client, caller: Caller, tmp_path: Path) -> Inventory:
    """web-01 (labels web; an SSH key with a become password), web-02 (web, prod; a password), db-01 (db; the key,
    variables), and new-01 without pinned keys; all but new-01 pin one host key."""
    login, host_key = key_pair(tmp_path / "keys", "login"), key_pair(tmp_path / "keys", "host")
    credentials = {
        "key": await add_credential(
            client, caller, name="key", kind="ssh_key", secret=login.private, become_password=BECOME_PASSWORD
        ),
        "password": await add_credential(client, caller, name="password", kind="password", secret=PASSWORD),
    }
    pinned = {"host_keys": [host_key.public]}
    hosts = {
        "web-01": await add_host(client, caller, "web-01", labels=["web"], credential="key", **pinned),
        "web-02": await add_host(
            client, caller, "web-02", labels=["web", "prod"], credential="password", port=2222, **pinned
        ),
        "db-01": await add_host(
            client, caller, "db-01", labels=["db"], credential="key", variables={"pg": 15}, user="ops", **pinned
        ),
        "new-01": await add_host(client, caller, "new-01", labels=["new"], credential="key"),
    }
    return Inventory(hosts, credentials, login, host_key)
