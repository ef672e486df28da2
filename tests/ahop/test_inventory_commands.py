"""`ahop credential …` and `ahop host …` against a real `ahop serve`: secrets from files and never printed, hosts
by name, pinned keys by fingerprint, and an Ansible inventory imported through Ansible's own reader."""

from __future__ import annotations

import json
from pathlib import Path

from app.db.models import Role
from tests.support.cli import ahop
from tests.support.ssh_hosts import TargetHost
from tests.support.ssh_keys import key_pair, ssh_keygen_fingerprint
from tests.support.tenants import Caller, token_of

INVENTORY = """\
[web]
web-01 ansible_host=10.0.0.11
web-02 ansible_host=10.0.0.12 ansible_ssh_common_args='-o StrictHostKeyChecking=no'

[db]
db-01 ansible_host=10.0.0.21 ansible_user=postgres
"""


def test_credentials_come_from_files_and_never_show(api_url: str, alice: Caller, tmp_path: Path) -> None:
    token = token_of(alice, Role.ADMIN)
    key = key_pair(tmp_path, "deploy")
    become = tmp_path / "become"
    become.write_text("sudo-pw-42\n")
    added = ahop(
        api_url,
        token,
        "credential",
        "add",
        "deploy",
        "--ssh-key-file",
        str(key.private_file),
        "--become-password-file",
        str(become),
    )
    assert added.returncode == 0, added.stderr
    listed = ahop(api_url, token, "credential", "list")
    assert listed.returncode == 0, listed.stderr
    assert key.fingerprint in listed.stdout
    for output in (added.stdout + added.stderr, listed.stdout):
        assert key.private.splitlines()[1] not in output
        assert "sudo-pw-42" not in output

    both = ahop(
        api_url,
        token,
        "credential",
        "add",
        "x",
        "--ssh-key-file",
        str(key.private_file),
        "--password-file",
        str(become),
    )
    assert both.returncode == 2
    assert "one of --ssh-key-file and --password-file" in both.stderr


def test_hosts_by_name_with_labels_and_pinned_keys(api_url: str, alice: Caller, tmp_path: Path) -> None:
    token = token_of(alice, Role.ADMIN)
    password = tmp_path / "password"
    password.write_text("pw\n")
    assert ahop(api_url, token, "credential", "add", "ops", "--password-file", str(password)).returncode == 0
    host_key = key_pair(tmp_path, "host")
    added = ahop(
        api_url,
        token,
        "host",
        "add",
        "web-01",
        "10.0.0.11",
        "--user",
        "deploy",
        "--label",
        "web",
        "--label",
        "prod",
        "--var",
        "http_port=8080",
        "--var",
        "tier=front",
        "--credential",
        "ops",
        "--host-key-file",
        str(host_key.public_file),
        "--json",
    )
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert (created["labels"], created["variables"]) == (["prod", "web"], {"http_port": 8080, "tier": "front"})
    assert ahop(api_url, token, "host", "add", "db-01", "10.0.0.21", "--label", "db").returncode == 0

    web = ahop(api_url, token, "host", "list", "--label", "web")
    assert web.returncode == 0, web.stderr
    assert "web-01" in web.stdout
    assert "db-01" not in web.stdout
    shown = ahop(api_url, token, "host", "show", "web-01")
    assert host_key.fingerprint in shown.stdout, shown.stdout
    unset = ahop(api_url, token, "host", "update", "web-01", "--no-credential", "--json")
    assert json.loads(unset.stdout)["credential"] is None

    in_use = ahop(api_url, token, "host", "update", "db-01", "--credential", "ops")
    assert in_use.returncode == 0, in_use.stderr
    kept = ahop(api_url, token, "credential", "remove", "ops")
    assert kept.returncode == 2
    assert "used by 1 host(s) (db-01)" in kept.stderr
    assert ahop(api_url, token, "host", "remove", "db-01").returncode == 0
    assert ahop(api_url, token, "credential", "remove", "ops").returncode == 0
    missing = ahop(api_url, token, "host", "show", "db-01")
    assert missing.returncode == 2
    assert "no host named 'db-01'" in missing.stderr
    wrong_var = ahop(api_url, token, "host", "add", "x", "10.0.0.1", "--var", "novalue")
    assert (wrong_var.returncode, "expected NAME=VALUE" in wrong_var.stderr) == (2, True)


def test_an_ansible_inventory_is_imported(api_url: str, alice: Caller, tmp_path: Path) -> None:
    token = token_of(alice, Role.ADMIN)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(INVENTORY)
    imported = ahop(api_url, token, "host", "import", str(inventory), "--user", "admin")
    assert imported.returncode == 0, imported.stderr
    assert "created 3, updated 0 host(s)" in imported.stdout
    assert "web-02: left out ansible_ssh_common_args" in imported.stdout
    hosts = {host["name"]: host for host in json.loads(ahop(api_url, token, "host", "list", "--json").stdout)["items"]}
    assert {name: (host["address"], host["user"], host["labels"]) for name, host in hosts.items()} == {
        "db-01": ("10.0.0.21", "postgres", ["db"]),
        "web-01": ("10.0.0.11", "admin", ["web"]),
        "web-02": ("10.0.0.12", "admin", ["web"]),
    }
    again = ahop(api_url, token, "host", "import", str(inventory))
    assert "created 0, updated 3 host(s)" in again.stdout

    broken = tmp_path / "broken.yml"
    broken.write_text("all: [this is: not an inventory\n")
    refused = ahop(api_url, token, "host", "import", str(broken))
    assert refused.returncode == 2
    assert f"ansible-inventory could not read {broken}" in refused.stderr, refused.stderr


def test_scan_keys_pins_shows_fingerprints_and_exits_1_on_a_changed_host(
    api_url: str, alice: Caller, ssh_hosts: list[TargetHost], tmp_path: Path
) -> None:
    token = token_of(alice, Role.ADMIN)
    target, other = ssh_hosts[0], key_pair(tmp_path, "other")
    for name, keys in (("fresh", []), ("changed", ["--host-key-file", str(other.public_file)])):
        added = ahop(api_url, token, "host", "add", name, target.address, "--port", str(target.port), *keys)
        assert added.returncode == 0, added.stderr
    fingerprints = [ssh_keygen_fingerprint(file) for file in target.host_key_files]

    pinned = ahop(api_url, token, "host", "scan-keys", "fresh")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.splitlines()[0] == "fresh: pinned"
    assert all(fingerprint in pinned.stdout for fingerprint in fingerprints), pinned.stdout

    changed = ahop(api_url, token, "host", "scan-keys", "changed")
    assert changed.returncode == 1, changed.stderr
    assert "not pinned (the keys differ from those pinned; --replace pins them)" in changed.stdout
    assert f"was: ssh-ed25519  {other.fingerprint}" in changed.stdout
    replaced = ahop(api_url, token, "host", "scan-keys", "changed", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    shown = ahop(api_url, token, "host", "show", "changed")
    assert all(fingerprint in shown.stdout for fingerprint in fingerprints), shown.stdout
    assert other.fingerprint not in shown.stdout
