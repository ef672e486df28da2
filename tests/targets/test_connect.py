"""Logging in to managed hosts: real sshd, the keys pinned for them and nothing else, a key or a password.

Fingerprints are checked against `ssh-keygen -lf`, OpenSSH's own reading of the host's key files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import pytest

from targets.connect import Login, Target, connect
from targets.errors import HostKeyMismatch, LoginRefused, TargetError, Unreachable
from targets.host_keys import HostKeyRefused
from tests.support.ssh_hosts import TargetHost, needs_root
from tests.support.ssh_keys import ssh_keygen_fingerprint

TIMEOUT = 30.0
"""Bound for logins that should succeed: only catches hangs."""
SHORT_TIMEOUT = 2.0
"""The timeout a login to a host that does not answer is given (the message must name it)."""


def target_of(host: TargetHost, host_keys: list[str] | None = None) -> Target:
    keys = host.host_keys if host_keys is None else host_keys
    return Target(host.name, host.address, host.port, host.user, tuple(keys))


def by_key(host: TargetHost) -> Login:
    return Login(private_key=host.client_key.read_text())


async def logged_in_as(target: Target, login: Login) -> str:
    """`id -un` on the host, over a connection made by `connect`."""
    async with await connect(target, login, timeout=TIMEOUT) as connection:
        result = await connection.run("id -un", check=True)
    assert isinstance(result.stdout, str)
    return result.stdout.strip()


async def test_a_key_logs_in_as_the_hosts_user(ssh_hosts: list[TargetHost]) -> None:
    for host in ssh_hosts:
        assert await logged_in_as(target_of(host), by_key(host)) == host.user


async def test_a_protected_key_logs_in_with_its_passphrase(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[1]
    login = Login(private_key=host.protected_client_key.read_text(), passphrase=host.client_key_passphrase)

    assert await logged_in_as(target_of(host), login) == host.user


@needs_root
async def test_a_password_logs_in(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[2]

    assert await logged_in_as(target_of(host), Login(password=host.password)) == host.user


async def test_the_connection_names_its_target(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    target = target_of(host)

    async with await connect(target, by_key(host), timeout=TIMEOUT) as connection:
        assert connection.get_extra_info("target") == target


async def test_a_host_showing_a_key_other_than_the_pinned_one_is_refused_naming_both(
    ssh_hosts: list[TargetHost],
) -> None:
    host, other = ssh_hosts[0], ssh_hosts[1]
    # Only the other host's ed25519 key is pinned: the handshake allows ed25519 only, so the host shows its own.
    target = target_of(host, [other.host_keys[0]])

    with pytest.raises(HostKeyMismatch) as refused:
        await connect(target, by_key(host), timeout=TIMEOUT)

    message = str(refused.value)
    assert f"{host.name} ({host.address}:{host.port})" in message
    assert f"showed the ssh-ed25519 host key {ssh_keygen_fingerprint(host.host_key_files[0])}" in message
    assert f"pinned: {ssh_keygen_fingerprint(other.host_key_files[0])} (ssh-ed25519)" in message
    assert f"ahop host scan-keys {host.name} --replace" in message


async def test_every_pinned_fingerprint_is_named_when_none_is_the_hosts(ssh_hosts: list[TargetHost]) -> None:
    host, other = ssh_hosts[0], ssh_hosts[2]

    with pytest.raises(HostKeyMismatch) as refused:
        await connect(target_of(host, other.host_keys), by_key(host), timeout=TIMEOUT)

    message = str(refused.value)
    assert all(ssh_keygen_fingerprint(path) in message for path in other.host_key_files)
    assert any(f"showed the {kind}" in message for kind in ("ssh-ed25519", "ssh-rsa"))
    assert not any(ssh_keygen_fingerprint(path) in message.split("pinned:")[1] for path in host.host_key_files)


async def test_a_host_with_no_key_of_the_pinned_type_is_refused_naming_what_it_offers(
    ssh_hosts: list[TargetHost],
) -> None:
    host = ssh_hosts[1]
    stranger = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key().decode().split()
    pinned = f"{stranger[0]} {stranger[1]}"

    with pytest.raises(HostKeyMismatch) as refused:
        await connect(target_of(host, [pinned]), by_key(host), timeout=TIMEOUT)

    message = str(refused.value)
    assert f"{host.name} ({host.address}:{host.port}) has no host key of a type pinned for it" in message
    assert "it offers ssh-ed25519, rsa-sha2-512, rsa-sha2-256" in message


async def test_a_host_with_no_pinned_keys_is_not_contacted_and_the_message_says_scan_keys(
    ssh_hosts: list[TargetHost],
) -> None:
    host = ssh_hosts[2]
    connections_before = host.log.read_text().count("Connection from")

    with pytest.raises(HostKeyMismatch, match=rf"ahop host scan-keys {host.name}`") as refused:
        await connect(target_of(host, []), by_key(host), timeout=TIMEOUT)

    assert f"{host.name} ({host.address}:{host.port}): no host key is pinned" in str(refused.value)
    assert host.log.read_text().count("Connection from") == connections_before


async def test_a_pinned_line_that_is_no_key_is_refused_as_bad_input(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]

    with pytest.raises(HostKeyRefused, match="no SSH host key type"):
        await connect(target_of(host, ["not a key"]), by_key(host), timeout=TIMEOUT)


@needs_root
async def test_a_wrong_password_is_refused_naming_user_host_and_method_never_the_password(
    ssh_hosts: list[TargetHost],
) -> None:
    host = ssh_hosts[2]
    wrong = host.password + "-wrong"

    with pytest.raises(LoginRefused) as refused:
        await connect(target_of(host), Login(password=wrong), timeout=TIMEOUT)

    message = str(refused.value)
    assert f"{host.user}@{host.address}" in message
    assert "by password" in message
    assert wrong not in message
    assert host.password not in message


async def test_a_key_the_host_does_not_authorize_is_refused_naming_its_fingerprint_never_its_text(
    ssh_hosts: list[TargetHost], tmp_path: Path
) -> None:
    host = ssh_hosts[0]
    key_text = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    stranger = tmp_path / "id_stranger"
    stranger.write_text(key_text)
    stranger.chmod(0o600)

    with pytest.raises(LoginRefused) as refused:
        await connect(target_of(host), Login(private_key=key_text), timeout=TIMEOUT)

    message = str(refused.value)
    assert f"{host.user}@{host.address}" in message
    assert f"by public key {ssh_keygen_fingerprint(stranger)}" in message
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in message.replace("\n", "")


async def test_a_protected_key_with_a_wrong_or_no_passphrase_is_refused_without_either(
    ssh_hosts: list[TargetHost],
) -> None:
    host = ssh_hosts[1]
    key_text = host.protected_client_key.read_text()

    with pytest.raises(LoginRefused, match="does not open with the passphrase given") as wrong:
        await connect(target_of(host), Login(private_key=key_text, passphrase="not it"), timeout=TIMEOUT)
    with pytest.raises(LoginRefused, match="is encrypted and no passphrase was given"):
        await connect(target_of(host), Login(private_key=key_text), timeout=TIMEOUT)

    assert "not it" not in str(wrong.value)
    assert host.client_key_passphrase not in str(wrong.value)


@needs_root
async def test_neither_the_agent_nor_the_users_ssh_files_take_part(
    ssh_hosts: list[TargetHost], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent and ~/.ssh/id_ed25519 holding the authorized key do not log in for a key the host refuses or a
    wrong password, and ~/.ssh/known_hosts trusting the host's real key does not let it past keys pinned for
    another host."""
    host, other = ssh_hosts[2], ssh_hosts[0]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(host.client_key, home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    (home / ".ssh" / "known_hosts").write_text(
        "".join(f"[{host.address}]:{host.port} {key}\n" for key in host.host_keys)
    )
    monkeypatch.setenv("HOME", str(home))
    with running_agent(tmp_path / "agent.sock", host.client_key) as socket_path:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))

        stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        with pytest.raises(LoginRefused):
            await connect(target_of(host), Login(private_key=stranger), timeout=TIMEOUT)
        with pytest.raises(LoginRefused):
            await connect(target_of(host), Login(password=host.password + "-wrong"), timeout=TIMEOUT)
        with pytest.raises(HostKeyMismatch):
            await connect(target_of(host, other.host_keys), Login(password=host.password), timeout=TIMEOUT)
        assert await logged_in_as(target_of(host), Login(password=host.password)) == host.user


@pytest.fixture
def stopped(ssh_host: TargetHost) -> TargetHost:
    ssh_host.stop()
    return ssh_host


async def test_a_stopped_host_is_unreachable_named_with_its_address(stopped: TargetHost) -> None:
    with pytest.raises(Unreachable, match="connection refused") as refused:
        await connect(target_of(stopped), by_key(stopped), timeout=TIMEOUT)

    assert f"{stopped.name} ({stopped.address}:{stopped.port})" in str(refused.value)


async def test_a_paused_host_is_unreachable_once_the_timeout_is_over(ssh_host: TargetHost) -> None:
    ssh_host.pause()
    try:
        # The outer bound only catches a hang; the login's own timeout is what must end it.
        with pytest.raises(Unreachable) as timed_out:
            await asyncio.wait_for(
                connect(target_of(ssh_host), by_key(ssh_host), timeout=SHORT_TIMEOUT), SHORT_TIMEOUT + 60
            )
    finally:
        ssh_host.resume()

    message = str(timed_out.value)
    assert f"{ssh_host.name} ({ssh_host.address}:{ssh_host.port}): timed out after {SHORT_TIMEOUT:g} s" in message


async def test_an_address_that_does_not_resolve_is_unreachable(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    target = Target(host.name, "no-such-host.invalid", host.port, host.user, tuple(host.host_keys))

    with pytest.raises(Unreachable, match=r"'no-such-host.invalid' does not resolve"):
        await connect(target, by_key(host), timeout=TIMEOUT)


def test_a_login_is_a_key_or_a_password_and_its_repr_shows_no_secret() -> None:
    login = Login(private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-body\n", passphrase="secret-phrase")
    by_password = Login(password="secret-password")

    for shown in (repr(login), repr(by_password), str(login)):
        assert "secret" not in shown
    assert (login.method, by_password.method) == ("public key", "password")
    with pytest.raises(ValueError, match="exactly one of them; got both"):
        Login(private_key="k", password="p")
    with pytest.raises(ValueError, match="exactly one of them; got neither"):
        Login()
    with pytest.raises(ValueError, match="a login by password has none"):
        Login(password="p", passphrase="q")


async def test_a_port_out_of_range_or_a_timeout_not_above_zero_is_refused_before_connecting(
    ssh_hosts: list[TargetHost],
) -> None:
    host = ssh_hosts[0]
    bad_port = Target(host.name, host.address, 70000, host.user, tuple(host.host_keys))

    with pytest.raises(ValueError, match="between 1 and 65535, not 70000"):
        await connect(bad_port, by_key(host), timeout=TIMEOUT)
    with pytest.raises(ValueError, match="above 0, not 0"):
        await connect(target_of(host), by_key(host), timeout=0)
    assert all(issubclass(error, TargetError) for error in (HostKeyMismatch, LoginRefused, Unreachable))


@contextmanager
def running_agent(socket_path: Path, key: Path) -> Iterator[Path]:
    """An ssh-agent listening on `socket_path` and holding `key`; stopped by its pid at the end."""
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30  # the agent creates its socket a moment after it starts
        while not socket_path.exists():
            assert agent.poll() is None, "ssh-agent exited before it created its socket"
            assert time.monotonic() < deadline, "ssh-agent did not create its socket"
            time.sleep(0.05)
        environment = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(key)], env=environment, check=True, capture_output=True)
        yield socket_path
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
