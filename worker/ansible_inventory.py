"""What ansible-playbook needs to run on a task's target hosts, written into a private directory of the run.

The directory (mode 0700, the run-as user's when there is one) holds:
- `inventory.json`: every host of the plan in group `all` (what `hosts: all` matches), with `ansible_host`,
  `ansible_port`, `ansible_user` from the snapshot over the host's own variables, and the key file of its login.
  No secret: passwords are in `host_vars/`;
- `known_hosts`: exactly the pinned keys (`[address]:port TYPE BASE64`). ssh gets `-F /dev/null` (no ssh_config),
  that file as its only known hosts with `StrictHostKeyChecking=yes` (a key not pinned is refused, never learnt),
  `IdentitiesOnly` and no agent: nothing of the worker's `~/.ssh` takes part;
- `keys/<n>`: per login with a private key, the key unencrypted, mode 0600. ssh would prompt for a passphrase, so
  an encrypted key is decrypted here, in memory, and only the decrypted key is written;
- `host_vars/<host>.yml` (mode 0600, beside the inventory, so Ansible reads it as the host's variables): the
  host's login password and become password, as `ansible_password` and `ansible_become_password`, tagged `!unsafe`
  so Ansible never templates them; only for a host that has them. Passwords reach ssh through Ansible's SSH_ASKPASS
  helper (shared memory, ansible-core 2.19 and later) and sudo through its prompt, never an argument or the
  environment;
- `tmp/`: ANSIBLE_LOCAL_TEMP;
- `results.jsonl`: what the `ahop_host_results` callback plugin writes (`worker.ansible_results`).

A host whose login cannot be used (absent from the job's secrets, no key or password, a key that does not open) is
left out of the inventory and reported with why; the others still run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from targets.host_keys import HostKeyRefused, known_hosts_line, parse_host_key
from worker.job_secrets import JobSecrets, LoginSecret
from worker.protocol import JobHost, TargetPlan
from worker.rundir import RunAsUser

PLUGINS_DIR = Path(__file__).with_name("ansible_plugins")
RESULTS_CALLBACK = "ahop_host_results"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""A host name that can name its host_vars file (the server allows no other)."""


@dataclass(frozen=True)
class PlaybookSetup:
    """What the runner adds to `ansible-playbook -e @params.json ENTRY` for a run on targets."""

    arguments: list[str]
    """Options for ansible-playbook: inventory, forks, become. No secret."""
    environment: dict[str, str]
    results_file: Path
    secrets: list[str]
    """Every secret value written here: masked wherever they would show in the output."""
    refused: dict[str, str]
    """Hosts left out, by name, with why their login cannot be used."""
    inventory_hosts: list[str]
    """The names of the hosts in the inventory, in the plan's order."""


class _LoginRefused(Exception):
    """A host's login cannot be used; the message names the host and says why."""


def write_playbook_setup(
    plan: TargetPlan, secrets: JobSecrets, directory: Path, owner: RunAsUser | None
) -> PlaybookSetup:
    """Create `directory` (replacing what an earlier attempt left there) and write into it what ansible-playbook
    needs to run on the plan's hosts; see the module docstring."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    ids = (owner.uid, owner.gid) if owner is not None else None
    if ids is not None:
        os.chown(directory, *ids)
    writer = _PrivateFiles(directory, ids)
    key_files: dict[str, Path] = {}
    inventory: dict[str, dict[str, Any]] = {}
    known_hosts: list[str] = []
    passwords: dict[str, dict[str, str]] = {}
    refused: dict[str, str] = {}
    for host in plan.hosts:
        try:
            if not _FILE_NAME.fullmatch(host.name):
                raise _LoginRefused(f"host {host.name!r}: its name cannot name an Ansible host")
            login = _login_of(host, secrets)
            pinned = _known_hosts(host)
            if login.private_key is not None and host.login not in key_files:
                key_files[host.login] = writer.write(f"keys/{len(key_files) + 1}", _usable_key(host, login))
        except _LoginRefused as exc:
            refused[host.name] = str(exc)
            continue
        known_hosts.append(pinned)
        inventory[host.name] = _host_vars(host, key_files.get(host.login))
        passwords[host.name] = {
            variable: value
            for variable, value in (
                ("ansible_password", login.password),
                ("ansible_become_password", login.become_password),
            )
            if value
        }
    writer.write("inventory.json", json.dumps({"all": {"hosts": inventory}}, indent=2))
    known_hosts_file = writer.write("known_hosts", "".join(known_hosts))
    for name, values in passwords.items():
        if values:
            writer.write(f"host_vars/{name}.yml", _secret_vars_yaml(values))
    writer.directory("tmp")
    results_file = writer.write("results.jsonl", "")
    arguments = ["-i", str(directory / "inventory.json"), "--forks", str(plan.forks)]
    if plan.require_sudo:
        arguments.append("--become")
    environment = {
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": RESULTS_CALLBACK,
        "AHOP_HOST_RESULTS_FILE": str(results_file),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": _ssh_args(known_hosts_file),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(directory / "tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }
    secret_values = [
        text
        for login in secrets.logins.values()
        for text in (login.private_key, login.passphrase, login.password, login.become_password)
        if text
    ]
    return PlaybookSetup(arguments, environment, results_file, secret_values, refused, list(inventory))


def _login_of(host: JobHost, secrets: JobSecrets) -> LoginSecret:
    login = secrets.logins.get(host.login)
    if login is None:
        raise _LoginRefused(f"host {host.name}: its login {host.login!r} is not among the job's secrets")
    if login.private_key is None and login.password is None:
        raise _LoginRefused(f"host {host.name}: its login {host.login!r} has neither a private key nor a password")
    return login


def _known_hosts(host: JobHost) -> str:
    try:
        keys = [parse_host_key(line) for line in host.host_keys]
    except HostKeyRefused as exc:
        raise _LoginRefused(f"host {host.name}: a pinned host key is not usable: {exc}") from exc
    return known_hosts_line(host.address, host.port, keys)


def _usable_key(host: JobHost, login: LoginSecret) -> str:
    """The login's private key in OpenSSH form without encryption: ssh cannot be given a passphrase."""
    assert login.private_key is not None
    try:
        key = asyncssh.import_private_key(login.private_key, login.passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        hint = "a wrong passphrase?" if login.passphrase else "an encrypted key needs its passphrase"
        raise _LoginRefused(
            f"host {host.name}: the private key of login {host.login!r} cannot be read ({exc}; {hint})"
        ) from None
    return key.export_private_key("openssh").decode("ascii")


def _host_vars(host: JobHost, key_file: Path | None) -> dict[str, Any]:
    """The host's variables, with the snapshot's address, port and user over any of their own."""
    values = {
        **host.variables,
        "ansible_host": host.address,
        "ansible_port": host.port,
        "ansible_user": host.username,
    }
    if key_file is not None:
        values["ansible_ssh_private_key_file"] = str(key_file)
    else:  # a password login: no key of the worker's own ~/.ssh is offered instead
        values["ansible_ssh_extra_args"] = "-o PubkeyAuthentication=no"
    return values


def _secret_vars_yaml(values: Mapping[str, str]) -> str:
    """A host_vars file: JSON strings are YAML double-quoted scalars, `!unsafe` keeps them from templating."""
    return "".join(f"{name}: !unsafe {json.dumps(value)}\n" for name, value in values.items())


def _ssh_args(known_hosts_file: Path) -> str:
    options = [
        "-F",
        "/dev/null",
        "-o",
        f"UserKnownHostsFile={known_hosts_file}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
    ]
    return shlex.join(options)


class _PrivateFiles:
    """Files and directories under the private directory: created new, mode 0600 / 0700, owned by the run-as user."""

    def __init__(self, root: Path, owner: tuple[int, int] | None) -> None:
        self.root = root
        self.owner = owner

    def directory(self, relative: str) -> Path:
        path = self.root / relative
        path.mkdir(mode=0o700)
        if self.owner is not None:
            os.chown(path, *self.owner)
        return path

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        if not path.parent.exists():
            self.directory(str(path.parent.relative_to(self.root)))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(path, flags, 0o600), "w", encoding="utf-8") as file:
            if self.owner is not None:
                os.fchown(file.fileno(), *self.owner)
            file.write(text)
        return path
