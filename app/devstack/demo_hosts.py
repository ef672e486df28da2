"""`ahop dev --demo-hosts N`: N local OpenSSH hosts in the default tenant's inventory, to try ahop on many hosts.

The hosts are `app.devstack.ssh_hosts` servers: demo-1 … demo-N on 127.0.0.11 … with host keys and a client key
pair kept under `<state dir>/demo-hosts/`, so that a second run keeps the keys the inventory pins and logs in with.
Each host has a home of its own (a host's content cache lives in its user's `~/.cache/ahop`): as root a user per
host (`ahop-demo-N`), otherwise the current user with a HOME per host.

They are registered through the API, with the admin token `ahop dev` holds, as an operator would add them: the
credential `demo-hosts` (the client key) and the hosts, label `demo`, with the host keys pinned from the key files
themselves (no scan, no trust on first use). What exists already by those names is updated: ports change from run
to run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.devstack.errors import StackError
from app.devstack.ssh_hosts import HostsLayout, KeyFile, SshHost, require_sshd, running_ssh_hosts

DEMO_LABEL = "demo"
CREDENTIAL_NAME = "demo-hosts"
API_WAIT = 30.0
"""Seconds one registration request may take (a bound for hangs)."""


def check_demo_hosts_possible() -> None:
    """Fail before anything starts when this machine cannot run the demo hosts."""
    try:
        require_sshd()
    except StackError as exc:
        raise StackError(f"--demo-hosts: {exc}") from None


def demo_layout(state_dir: Path, count: int) -> HostsLayout:
    """demo-1 … demo-`count`, their keys under `<state dir>/demo-hosts/`, which outlives the run."""
    directory = state_dir / "demo-hosts"
    return HostsLayout(
        directory=directory,
        names=[f"demo-{index}" for index in range(1, count + 1)],
        client_keys=[KeyFile(directory / "client" / "id_ed25519", "ed25519", CREDENTIAL_NAME)],
        user_name=lambda index: f"ahop-demo-{index}",
        own_homes=True,
    )


@contextmanager
def demo_hosts(state_dir: Path, count: int) -> Iterator[list[SshHost]]:
    """The demo hosts, running (none for `count` 0); stopped, and their users and homes removed, at the end."""
    if count == 0:
        yield []
        return
    with running_ssh_hosts(demo_layout(state_dir, count), SshHost) as hosts:
        yield hosts


def register(api_url: str, token: str, hosts: list[SshHost]) -> None:
    """Add (or update) the credential and the hosts in the inventory of the token's tenant."""
    if not hosts:
        return
    headers = {"Authorization": f"Bearer {token}"}
    secret = hosts[0].client_key.read_text()
    try:
        with httpx.Client(base_url=api_url, headers=headers, timeout=API_WAIT) as client:
            credential = {"name": CREDENTIAL_NAME, "kind": "ssh_key", "secret": secret}
            _create_or_update(client, "/api/v1/credentials", credential)
            for host in hosts:
                fields = {"address": host.address, "port": host.port, "user": host.user, "labels": [DEMO_LABEL]}
                body = {"name": host.name, **fields, "credential": CREDENTIAL_NAME, "host_keys": host.host_keys}
                _create_or_update(client, "/api/v1/hosts", body)
    except httpx.HTTPError as exc:
        raise StackError(f"demo hosts: the API at {api_url} did not answer: {exc}") from exc


def _create_or_update(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    """POST `body` to `path`, or PUT it to the item of its name when there is one."""
    found = _answer(client.get(path, params={"name": body["name"]}), f"looking up {body['name']!r}")["items"]
    if found:
        _answer(client.put(f"{path}/{found[0]['id']}", json=body), f"updating {body['name']!r}")
    else:
        _answer(client.post(path, json=body), f"adding {body['name']!r}")


def _answer(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        raise StackError(f"demo hosts: {what} failed: {response.status_code} {response.text}")
    return response.json()


def banner(hosts: list[SshHost]) -> str:
    """The ready banner's lines on the demo hosts (none without hosts)."""
    if not hosts:
        return ""
    listing = f"ahop host list --label {DEMO_LABEL}"
    lines = [f"  Demo hosts: label {DEMO_LABEL!r}, credential {CREDENTIAL_NAME!r}   ({listing})"]
    width = max(len(host.name) for host in hosts)
    lines += [f"    {host.name:<{width}}  {host.user}@{host.address}:{host.port}  home {host.home}" for host in hosts]
    return "\n".join(lines) + "\n"
