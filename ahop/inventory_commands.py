"""Client commands for the inventory: `ahop host …` and `ahop credential …` over the HTTP API.

Hosts and credentials are named by their name or their id. Secrets are read from files (`-`: standard input), never
from the command line. `ahop host import` has Ansible read the inventory (`ansible-inventory --list`, INI or YAML,
with ranges, children and group variables as Ansible resolves them) and sends what it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from ahop.api_client import call_api
from ahop.client_commands import json_option, read_secret
from ahop.console import echo_json, fail, show
from ahop.exit_codes import EXIT_BAD_INPUT, EXIT_PROBLEMS

HOST_COLUMNS = ["id", "name", "address", "port", "user", "labels", "credential", "host_keys"]
CREDENTIAL_COLUMNS = ["id", "name", "kind", "fingerprint", "has_passphrase", "has_become_password", "hosts"]
secret_file = click.Path(path_type=Path, dir_okay=False, allow_dash=True)


def _find(collection: str, what: str, reference: str) -> dict[str, Any]:
    """The object of `collection` named `reference` (its name, or its id when it is a number)."""
    if reference.isdigit():
        return dict(call_api("GET", f"/api/v1/{collection}/{reference}"))
    found = call_api("GET", f"/api/v1/{collection}?name={quote(reference)}")["items"]
    if not found:
        fail(f"no {what} named {reference!r}", EXIT_BAD_INPUT)
    return dict(found[0])


def _credential_ref(reference: str) -> int | str:
    return int(reference) if reference.isdigit() else reference


def _variables(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--var NAME=VALUE` pairs: a VALUE that is JSON (a number, true, a list…) is taken as such, else as text."""
    variables: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            fail(f"--var {pair!r}: expected NAME=VALUE", EXIT_BAD_INPUT)
        try:
            variables[name] = json.loads(value)
        except ValueError:
            variables[name] = value
    return variables


def _host_keys(files: tuple[Path, ...]) -> list[str]:
    """The keys of each file given (a .pub file, a known_hosts file or ssh-keyscan's output), one per line."""
    keys = []
    for path in files:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}", EXIT_BAD_INPUT)
        keys += [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return keys


@click.group()
def host() -> None:
    """The inventory's target hosts (through the API)."""


@host.command("add")
@click.argument("name")
@click.argument("address")
@click.option("--port", type=int, default=22, show_default=True)
@click.option("--user", default="root", show_default=True, help="The login user.")
@click.option("--label", "labels", multiple=True, help="A label (repeatable): a group of hosts.")
@click.option("--var", "variables", multiple=True, help="A host variable NAME=VALUE (repeatable).")
@click.option("--credential", default=None, help="The credential that logs in (its name or id).")
@click.option(
    "--host-key-file",
    "host_key_files",
    type=secret_file,
    multiple=True,
    help="Pin the host keys in this file (.pub, known_hosts or ssh-keyscan output; repeatable).",
)
@json_option
def host_add(
    name: str,
    address: str,
    port: int,
    user: str,
    labels: tuple[str, ...],
    variables: tuple[str, ...],
    credential: str | None,
    host_key_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Add host NAME at ADDRESS. Its host keys are pinned from --host-key-file or, later, `ahop host scan-keys`:
    until then no task logs in to it."""
    payload: dict[str, Any] = {
        "name": name,
        "address": address,
        "port": port,
        "user": user,
        "labels": list(labels),
        "variables": _variables(variables),
        "host_keys": _host_keys(host_key_files),
    }
    if credential is not None:
        payload["credential"] = _credential_ref(credential)
    show(call_api("POST", "/api/v1/hosts", payload), as_json, HOST_COLUMNS)


@host.command("update")
@click.argument("reference")
@click.option("--name", default=None, help="A new name.")
@click.option("--address", default=None)
@click.option("--port", type=int, default=None)
@click.option("--user", default=None)
@click.option("--label", "labels", multiple=True, help="The host's labels, replacing its own (repeatable).")
@click.option("--var", "variables", multiple=True, help="The host's variables, replacing its own (repeatable).")
@click.option("--credential", default=None, help="Another credential (its name or id).")
@click.option("--no-credential", is_flag=True, help="Remove the host's credential.")
@json_option
def host_update(
    reference: str,
    name: str | None,
    address: str | None,
    port: int | None,
    user: str | None,
    labels: tuple[str, ...],
    variables: tuple[str, ...],
    credential: str | None,
    no_credential: bool,
    as_json: bool,
) -> None:
    """Change host REFERENCE (its name or id); what is not given stays as it is."""
    payload: dict[str, Any] = {
        key: value
        for key, value in (("name", name), ("address", address), ("port", port), ("user", user))
        if value is not None
    }
    if labels:
        payload["labels"] = list(labels)
    if variables:
        payload["variables"] = _variables(variables)
    if credential is not None and no_credential:
        fail("give --credential or --no-credential, not both", EXIT_BAD_INPUT)
    if credential is not None:
        payload["credential"] = _credential_ref(credential)
    if no_credential:
        payload["credential"] = None
    if not payload:
        fail("nothing to change: give a field to change", EXIT_BAD_INPUT)
    found = _find("hosts", "host", reference)
    show(call_api("PUT", f"/api/v1/hosts/{found['id']}", payload), as_json, HOST_COLUMNS)


@host.command("list")
@click.option("--label", "labels", multiple=True, help="Only hosts with this label (repeatable: every one).")
@json_option
def host_list(labels: tuple[str, ...], as_json: bool) -> None:
    """List the inventory's hosts by name."""
    query = "".join(f"&label={quote(label)}" for label in labels)
    answer = call_api("GET", f"/api/v1/hosts?page_size=500{query}")
    if as_json:
        echo_json(answer)
        return
    show([_row(item) for item in answer["items"]], False, HOST_COLUMNS)


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """A host as a table shows it: labels joined, its host keys by fingerprint."""
    keys = ", ".join(key["fingerprint"] for key in item["host_keys"]) or "(none pinned)"
    return {**item, "labels": ",".join(item["labels"]), "host_keys": keys}


@host.command("show")
@click.argument("reference")
@json_option
def host_show(reference: str, as_json: bool) -> None:
    """Show host REFERENCE (its name or id), with the fingerprints of its pinned host keys."""
    found = _find("hosts", "host", reference)
    if as_json:
        echo_json(found)
        return
    show(_row(found), False, HOST_COLUMNS)


@host.command("remove")
@click.argument("reference")
def host_remove(reference: str) -> None:
    """Remove host REFERENCE (its name or id) from the inventory."""
    _remove("hosts", "host", reference)


def _remove(collection: str, what: str, reference: str) -> None:
    found = _find(collection, what, reference)
    call_api("DELETE", f"/api/v1/{collection}/{found['id']}")
    click.echo(f"{what} {found['name']} removed")


def _ansible_inventory() -> str:
    beside = Path(sys.executable).with_name("ansible-inventory")
    found = str(beside) if beside.exists() else shutil.which("ansible-inventory")
    if found is None:
        fail(
            "ansible-inventory is not installed: install Ansible (pip install ansible-core), or pass the JSON "
            "that `ansible-inventory -i FILE --list` prints",
            EXIT_BAD_INPUT,
        )
    return found


def _listing(path: Path) -> dict[str, Any]:
    """The inventory at `path` as `ansible-inventory --list` prints it (`path` may already be that JSON)."""
    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_BAD_INPUT)
    try:
        given = json.loads(text)
        if isinstance(given, dict) and "_meta" in given:
            return given
    except ValueError:
        pass
    # A file Ansible cannot parse is otherwise a warning, and an empty inventory.
    strict = {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"}
    listed = subprocess.run(
        [_ansible_inventory(), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **strict},
    )
    if listed.returncode != 0:
        fail(f"ansible-inventory could not read {path}:\n{listed.stderr.strip()}", EXIT_BAD_INPUT)
    return dict(json.loads(listed.stdout))


@host.command("import")
@click.argument("inventory", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--credential", default=None, help="Give every host imported this credential (its name or id).")
@click.option("--user", "default_user", default="root", show_default=True, help="For hosts without ansible_user.")
@json_option
def host_import(inventory: Path, credential: str | None, default_user: str, as_json: bool) -> None:
    """Add or update the hosts of an Ansible INVENTORY (INI or YAML): its groups become labels, `ansible_host`,
    `ansible_port` and `ansible_user` the hosts' fields, other variables their variables. All hosts, or none."""
    payload: dict[str, Any] = {"inventory": _listing(inventory), "default_user": default_user}
    if credential is not None:
        payload["credential"] = _credential_ref(credential)
    answer = call_api("POST", "/api/v1/hosts/import", payload)
    if as_json:
        echo_json(answer)
        return
    click.echo(f"created {len(answer['created'])}, updated {len(answer['updated'])} host(s)")
    for name, dropped in answer["dropped"].items():
        click.echo(f"  {name}: left out {', '.join(dropped)} (ahop connects the host itself)")


@host.command("scan-keys")
@click.argument("references", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="Only show the keys the hosts offer; pin nothing.")
@click.option("--replace", is_flag=True, help="Pin the keys found even where they differ (a reinstalled host).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per host.")
@json_option
def host_scan_keys(references: tuple[str, ...], dry_run: bool, replace: bool, timeout: float, as_json: bool) -> None:
    """Read the SSH host keys that hosts REFERENCES offer and pin them, showing their fingerprints. Keys that
    differ from those pinned are shown, not pinned, unless --replace: exit 1 then."""
    answers, changed = [], False
    for reference in references:
        found = _find("hosts", "host", reference)
        payload = {"pin": not dry_run, "replace": replace, "timeout": timeout}
        answer = call_api("POST", f"/api/v1/hosts/{found['id']}/scan-keys", payload)
        answers.append(answer)
        changed |= answer["changed"] and not answer["pinned"]
        if not as_json:
            _echo_scan(found["name"], answer)
    if as_json:
        echo_json(answers)
    if changed:
        sys.exit(EXIT_PROBLEMS)


def _echo_scan(name: str, answer: dict[str, Any]) -> None:
    state = "pinned" if answer["pinned"] else "not pinned"
    if answer["changed"]:
        state += " (the keys differ from those pinned" + ("" if answer["pinned"] else "; --replace pins them") + ")"
    click.echo(f"{name}: {state}")
    for key in answer["found"]:
        click.echo(f"  {key['algorithm']}  {key['fingerprint']}")
    if answer["changed"]:
        for key in answer["pinned_before"]:
            click.echo(f"  was: {key['algorithm']}  {key['fingerprint']}")


@click.group()
def credential() -> None:
    """Credentials that log in to hosts (through the API); their secrets go in, never out."""


def _secrets(ssh_key_file: Path | None, password_file: Path | None, passphrase_file: Path | None) -> dict[str, Any]:
    if (ssh_key_file is None) == (password_file is None):
        fail("give one of --ssh-key-file and --password-file", EXIT_BAD_INPUT)
    if ssh_key_file is not None:
        secrets: dict[str, Any] = {"kind": "ssh_key", "secret": read_secret(ssh_key_file)}
        if passphrase_file is not None:
            secrets["passphrase"] = read_secret(passphrase_file)
        return secrets
    if passphrase_file is not None:
        fail("--passphrase-file goes with --ssh-key-file", EXIT_BAD_INPUT)
    assert password_file is not None
    return {"kind": "password", "secret": read_secret(password_file)}


@credential.command("add")
@click.argument("name")
@click.option("--ssh-key-file", type=secret_file, help="A file holding the SSH private key ('-': stdin).")
@click.option("--passphrase-file", type=secret_file, help="A file holding the key's passphrase.")
@click.option("--password-file", type=secret_file, help="A file holding the login password ('-': stdin).")
@click.option("--become-password-file", type=secret_file, help="A file holding the password sudo asks for.")
@json_option
def credential_add(
    name: str,
    ssh_key_file: Path | None,
    passphrase_file: Path | None,
    password_file: Path | None,
    become_password_file: Path | None,
    as_json: bool,
) -> None:
    """Add credential NAME: an SSH key (with its passphrase) or a password, and optionally a become password."""
    payload = {"name": name, **_secrets(ssh_key_file, password_file, passphrase_file)}
    if become_password_file is not None:
        payload["become_password"] = read_secret(become_password_file)
    show(call_api("POST", "/api/v1/credentials", payload), as_json, CREDENTIAL_COLUMNS)


@credential.command("list")
@json_option
def credential_list(as_json: bool) -> None:
    """List credentials, with the fingerprint of each key and how many hosts use it."""
    show(call_api("GET", "/api/v1/credentials?page_size=500"), as_json, CREDENTIAL_COLUMNS)


@credential.command("remove")
@click.argument("reference")
def credential_remove(reference: str) -> None:
    """Remove credential REFERENCE (its name or id); refused while hosts use it."""
    _remove("credentials", "credential", reference)
