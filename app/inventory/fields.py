"""What a host of the inventory may hold, checked in one place for the API and for an imported inventory.

A host's connection (where, as whom, with which key, against which host keys) is its fields and its credential,
never its variables: the variables go into Ansible's inventory as host variables, where a connection variable would
override what ahop set (`ansible_connection: local` would run the play on the worker, `ansible_ssh_common_args` could
turn host-key checking off) and a secret would sit in the clear in the database and the inventory file.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidInput

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
"""A host's name: how tasks, logs and Ansible's inventory name it (as an inventory hostname does)."""
LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""A label: a group of hosts (an Ansible group, when imported)."""
USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}\$?")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
"""A variable's name, as Ansible accepts it."""
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
MAX_LABELS = 100
MAX_VARIABLES_BYTES = 64 << 10

FIELD_VARIABLES = {
    "ansible_host": "address",
    "ansible_ssh_host": "address",
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
}
"""Connection variables that are a host's own fields."""
SECRET_VARIABLES = frozenset(
    {
        "ansible_password",
        "ansible_ssh_pass",
        "ansible_ssh_password",
        "ansible_become_pass",
        "ansible_become_password",
        "ansible_sudo_pass",
        "ansible_su_pass",
        "ansible_ssh_private_key_file",
        "ansible_private_key_file",
    }
)
"""Secrets, or where one is: they belong in a credential (`ahop credential add`)."""
CONNECTION_VARIABLES = frozenset(
    {
        "ansible_connection",
        "ansible_ssh_common_args",
        "ansible_ssh_extra_args",
        "ansible_sftp_extra_args",
        "ansible_scp_extra_args",
        "ansible_ssh_executable",
        "ansible_ssh_pipelining",
        "ansible_host_key_checking",
        "ansible_ssh_host_key_checking",
    }
)
"""How Ansible connects: ahop sets it from the host's fields, its credential and its pinned host keys."""


@dataclass(frozen=True)
class HostFields:
    """A host as given; `check_host` answers it checked."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    labels: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)


def check_host(host: HostFields, *, where: str = "") -> HostFields:
    """`host` with its labels sorted and without duplicates, or `InvalidInput` naming each wrong field (prefixed
    with `where`, such as `hosts.web-01.`, when the host is one of many)."""
    problems: dict[str, str] = {}
    if not NAME.fullmatch(host.name):
        problems["name"] = "1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
    if not _is_address(host.address):
        problems["address"] = "an IP address or a DNS name"
    if isinstance(host.port, bool) or not isinstance(host.port, int) or not 1 <= host.port <= 65535:
        problems["port"] = "an integer from 1 to 65535"
    if not isinstance(host.user, str) or not USERNAME.fullmatch(host.user):
        problems["user"] = "a login name: letters, digits, '.', '_' or '-' (at most 64)"
    wrong_labels = [label for label in host.labels if not isinstance(label, str) or not LABEL.fullmatch(label)]
    if wrong_labels:
        problems["labels"] = (
            f"{wrong_labels[0]!r} is not a label: 1-100 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )
    elif len(set(host.labels)) > MAX_LABELS:
        problems["labels"] = f"at most {MAX_LABELS} labels"
    problems.update(_variable_problems(host.variables))
    if problems:
        named = {f"{where}{key}": value for key, value in problems.items()}
        what = f" of host {host.name!r}" if where else ""
        details = "; ".join(f"{key}: {value}" for key, value in named.items())
        raise InvalidInput(f"wrong fields{what}: {details}", named)
    return HostFields(host.name, host.address, host.port, host.user, sorted(set(host.labels)), dict(host.variables))


def _variable_problems(variables: object) -> dict[str, str]:
    if not isinstance(variables, dict):
        return {"variables": "an object of variable names to values"}
    for name in variables:
        if name in FIELD_VARIABLES:
            return {"variables": f"{name} is the host's {FIELD_VARIABLES[name]}: give it as that field"}
        if name in SECRET_VARIABLES:
            return {
                "variables": f"{name} is a secret: keep it in a credential (ahop credential add), never in variables"
            }
        if name in CONNECTION_VARIABLES:
            return {"variables": f"{name} is set by ahop from the host's fields, credential and pinned host keys"}
        if not isinstance(name, str) or not VARIABLE.fullmatch(name):
            return {"variables": f"{name!r} is not a variable name: a letter or '_', then letters, digits or '_'"}
    if len(json.dumps(variables, separators=(",", ":")).encode()) > MAX_VARIABLES_BYTES:
        return {"variables": f"at most {MAX_VARIABLES_BYTES >> 10} KiB of JSON"}
    return {}


def _is_address(address: object) -> bool:
    if not isinstance(address, str) or not 0 < len(address) <= 253:
        return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return all(_DNS_LABEL.fullmatch(part) for part in address.removesuffix(".").split("."))
    return True
