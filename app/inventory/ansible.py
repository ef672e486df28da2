"""An Ansible inventory as hosts: what `ansible-inventory --list` prints, read into the inventory's fields.

Ansible itself parses the inventory (INI or YAML, host ranges, group children, group variables): `ahop host import`
runs `ansible-inventory --list` where the inventory is and sends its JSON. Here each host of it becomes a host:
`ansible_host`, `ansible_port` and `ansible_user` (or their `ansible_ssh_` forms) its address, port and user; the
groups it belongs to, directly or through a child group, its labels (`all` and `ungrouped` are no labels); its other
variables its variables. Connection variables (`ansible_connection`, `ansible_ssh_common_args`, …) are dropped and
named in the answer, since ahop connects the host itself; a secret (`ansible_password`, …) is refused, because it
belongs in a credential and dropping it would leave a host that cannot log in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput
from app.inventory.fields import CONNECTION_VARIABLES, FIELD_VARIABLES, SECRET_VARIABLES, HostFields, check_host

NO_LABELS = frozenset({"all", "ungrouped"})
MAX_HOSTS = 10_000


@dataclass(frozen=True)
class ReadInventory:
    hosts: list[HostFields]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Per host, the connection variables left out."""


def read_ansible_inventory(listing: object, *, default_user: str) -> ReadInventory:
    """The hosts of `listing` (the JSON of `ansible-inventory --list`), each checked as the API checks one host;
    `InvalidInput` naming the host and field of the first problem."""
    if not isinstance(listing, dict) or not isinstance(listing.get("_meta", {}), dict):
        raise InvalidInput(
            "not an inventory listing: expected the JSON object that `ansible-inventory -i FILE --list` prints",
            {"inventory": "the output of ansible-inventory --list"},
        )
    groups = {name: body for name, body in listing.items() if name != "_meta" and isinstance(body, dict)}
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    if not isinstance(hostvars, dict):
        raise InvalidInput("the listing's _meta.hostvars is not an object", {"inventory": "_meta.hostvars"})
    members = _members(groups)
    names = sorted(set(hostvars) | {host for hosts in members.values() for host in hosts})
    if len(names) > MAX_HOSTS:
        raise InvalidInput(f"{len(names)} hosts: at most {MAX_HOSTS} in one import", {"inventory": "too many hosts"})
    hosts, dropped = [], {}
    for name in names:
        variables = hostvars.get(name, {})
        if not isinstance(variables, dict):
            raise InvalidInput(f"the variables of host {name!r} are not an object", {f"hosts.{name}": "variables"})
        host, left_out = _host(name, variables, sorted(g for g, hs in members.items() if name in hs), default_user)
        hosts.append(host)
        if left_out:
            dropped[name] = left_out
    return ReadInventory(hosts, dropped)


def _members(groups: Mapping[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Each group's hosts, its own and those of its children (transitively), without the groups named NO_LABELS."""

    def hosts_of(group: str, seen: frozenset[str]) -> set[str]:
        body = groups.get(group, {})
        found = {host for host in body.get("hosts", []) if isinstance(host, str)}
        for child in body.get("children", []):
            if isinstance(child, str) and child not in seen:
                found |= hosts_of(child, seen | {child})
        return found

    return {group: hosts_of(group, frozenset({group})) for group in groups if group not in NO_LABELS}


def _host(name: str, variables: dict[str, Any], labels: list[str], default_user: str) -> tuple[HostFields, list[str]]:
    where = f"hosts.{name}."
    secrets = sorted(key for key in variables if key in SECRET_VARIABLES)
    if secrets:
        raise InvalidInput(
            f"host {name!r} has {', '.join(secrets)} in the inventory: keep secrets in a credential "
            "(ahop credential add) and import with --credential NAME",
            {f"{where}variables": f"{secrets[0]} is a secret"},
        )
    fields = {FIELD_VARIABLES[key]: value for key, value in sorted(variables.items()) if key in FIELD_VARIABLES}
    port = fields.get("port", 22)
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    own = {key: value for key, value in variables.items() if key not in FIELD_VARIABLES}
    dropped = sorted(key for key in own if key in CONNECTION_VARIABLES)
    host = HostFields(
        name=name,
        address=str(fields.get("address", name)),
        port=port,
        user=str(fields.get("user", default_user)),
        labels=labels,
        variables={key: value for key, value in own.items() if key not in CONNECTION_VARIABLES},
    )
    return check_host(host, where=where), dropped
