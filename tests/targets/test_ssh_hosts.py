"""The target hosts of tests/support/ssh_hosts.py behave as managed hosts do: each its own address, user, home and
host keys; key, passphrase and password logins; a pinned key of another host refused; nothing left behind.

Connections here pin keys with asyncssh's own known_hosts parser, independently of `targets`.
"""

from __future__ import annotations

import pwd
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

from tests.support.ssh_hosts import AS_ROOT, TargetHost, exited, needs_root, target_hosts
from tests.support.waiting import until


def pinned(host: TargetHost, keys: list[str]) -> asyncssh.SSHKnownHosts:
    """known_hosts that trust `keys` for `host`'s address and port."""
    return asyncssh.import_known_hosts("".join(f"[{host.address}]:{host.port} {key}\n" for key in keys))


@asynccontextmanager
async def connected(host: TargetHost, **options: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An SSH connection to `host` as its user, pinning its own host keys, with the client key unless told
    otherwise; no ~/.ssh configuration and no agent."""
    settings: dict[str, Any] = {
        "known_hosts": pinned(host, host.host_keys),
        "client_keys": [str(host.client_key)],
        **options,
    }
    async with asyncssh.connect(
        host.address, host.port, username=host.user, config=None, agent_path=None, **settings
    ) as connection:
        yield connection


async def output(connection: asyncssh.SSHClientConnection, command: str) -> str:
    result = await connection.run(command, check=True)
    assert isinstance(result.stdout, str)
    return result.stdout.strip()


async def test_each_host_is_its_own_address_user_and_home(ssh_hosts: list[TargetHost]) -> None:
    for host in ssh_hosts:
        async with connected(host) as connection:
            assert await output(connection, "id -un") == host.user
            assert await output(connection, "echo $HOME") == str(host.home)
            server_address, server_port = (await output(connection, "echo $SSH_CONNECTION")).split()[2:]
            assert (server_address, int(server_port)) == (host.address, host.port)
    assert len({host.address for host in ssh_hosts}) == len(ssh_hosts)
    if AS_ROOT:
        assert len({host.user for host in ssh_hosts}) == len(ssh_hosts)
        assert all(pwd.getpwnam(host.user).pw_dir == str(host.home) for host in ssh_hosts)


async def test_the_protected_client_key_logs_in_with_its_passphrase_only(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[1]
    protected = [str(host.protected_client_key)]

    async with connected(host, client_keys=protected, passphrase=host.client_key_passphrase) as connection:
        assert await output(connection, "id -un") == host.user
    with pytest.raises(asyncssh.KeyImportError, match=r"[Pp]assphrase"):
        async with connected(host, client_keys=protected):
            pass
    with pytest.raises(asyncssh.KeyEncryptionError):
        async with connected(host, client_keys=protected, passphrase="not the passphrase"):
            pass


@needs_root
async def test_the_users_password_logs_in_and_another_is_refused(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[2]
    by_password: dict[str, Any] = {"client_keys": None, "preferred_auth": "password"}

    async with connected(host, password=host.password, **by_password) as connection:
        assert await output(connection, "id -un") == host.user
    with pytest.raises(asyncssh.PermissionDenied):
        async with connected(host, password=host.password + "x", **by_password):
            pass


async def test_a_connection_that_pins_another_hosts_key_is_refused(ssh_hosts: list[TargetHost]) -> None:
    host, other = ssh_hosts[0], ssh_hosts[1]

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connected(host, known_hosts=pinned(host, other.host_keys)):
            pass


async def test_sftp_reaches_the_users_home(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    async with connected(host) as connection, connection.start_sftp_client() as sftp:
        async with sftp.open("sent-by-sftp.txt", "w") as remote:
            await remote.write("over sftp\n")
        assert await output(connection, "cat ~/sent-by-sftp.txt") == "over sftp"
        assert await output(connection, "stat -c %U ~/sent-by-sftp.txt") == host.user
        await sftp.remove("sent-by-sftp.txt")


async def test_a_session_whose_command_ends_leaves_no_process_behind(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[1]
    async with connected(host) as connection:
        process = await connection.create_process("cat")
        await until(_running_below(host, "cat"), "the session's cat below the sshd")
        process.stdin.write_eof()
        assert (await process.wait(check=True)).exit_status == 0

    async def nothing_left() -> bool:
        return host.session_processes() == [] and host.remote_processes() == []

    await until(nothing_left, "the session's processes to end")
    assert host.pid is not None  # the listening sshd itself stays


async def test_a_command_still_running_when_its_session_closes_goes_on_and_its_host_finds_it(
    ssh_host: TargetHost,
) -> None:
    async with connected(ssh_host) as connection:
        process = await connection.create_process("sleep 600")
        await until(_running_below(ssh_host, "sleep 600"), "the session's sleep below the sshd")
        process.close()

    async def none_below() -> bool:
        return ssh_host.session_processes() == []

    await until(none_below, "the sessions below the sshd to end")
    # OpenSSH signals nothing when a session without a terminal closes: the command runs on, outside the sshd's tree.
    assert [_cmdline(p) for p in ssh_host.remote_processes()] == ["sleep 600"]


async def test_a_paused_host_stops_its_sessions_too_and_resumes_them(ssh_host: TargetHost) -> None:
    async with connected(ssh_host) as connection:
        await connection.create_process("sleep 600")
        await until(_running_below(ssh_host, "sleep 600"), "the session's processes")
        below = ssh_host.session_processes()
        listener = psutil.Process(ssh_host.pid)

        ssh_host.pause()
        assert {p.status() for p in [listener, *below]} == {psutil.STATUS_STOPPED}
        ssh_host.resume()

        assert psutil.STATUS_STOPPED not in {p.status() for p in [listener, *below]}
        assert await output(connection, "echo still here") == "still here"


async def test_a_stopped_host_refuses_connections_and_ends_its_sessions_and_start_brings_it_back(
    ssh_host: TargetHost,
) -> None:
    async with connected(ssh_host) as connection:
        await connection.create_process("sleep 600")
        await until(_running_below(ssh_host, "sleep 600"), "the session's processes")
        below = ssh_host.session_processes()

        ssh_host.stop()

        assert ssh_host.pid is None
        assert all(exited(p) for p in below)
        await until(_closed(connection), "the client to see the connection end")
    with pytest.raises(ConnectionRefusedError):
        async with connected(ssh_host):
            pass

    ssh_host.start()
    async with connected(ssh_host) as connection:  # same address, port and host keys
        assert await output(connection, "id -un") == ssh_host.user


async def test_the_end_stops_every_sshd_and_session_and_removes_the_users(tmp_path: Path) -> None:
    with target_hosts(tmp_path, 2) as started:
        connection = await asyncssh.connect(
            started[0].address,
            started[0].port,
            username=started[0].user,
            known_hosts=pinned(started[0], started[0].host_keys),
            client_keys=[str(started[0].client_key)],
            config=None,
            agent_path=None,
        )
        await connection.create_process("sleep 600")
        # A command that leaves the sshd's tree, and one that the user's session left running there.
        escaped = int(await output(connection, "setsid sleep 601 </dev/null >/dev/null 2>&1 & echo $!"))
        left = await connection.create_process("sleep 602")
        await until(_running_below(started[0], "sleep 602"), "the session's sleep 602")
        left.close()
        await until(_running_below(started[0], "sleep 600"), "the session's processes")
        ours = [psutil.Process(host.pid) for host in started if host.pid is not None]
        ours += [p for host in started for p in host.session_processes() + host.remote_processes()]
        assert escaped in [p.pid for p in started[0].remote_processes()]
        assert {"sleep 600", "sleep 601", "sleep 602"} <= {_cmdline(p) for p in ours}
        users, homes = [host.user for host in started], [host.home for host in started]

    assert len(ours) >= 5
    assert all(exited(p) for p in ours)
    connection.close()
    await connection.wait_closed()
    if AS_ROOT:
        for user, home in zip(users, homes, strict=True):
            with pytest.raises(KeyError):
                pwd.getpwnam(user)
            assert not home.exists()


def _running_below(host: TargetHost, command: str) -> Callable[[], Awaitable[bool]]:
    """A check that a session of the host's sshd runs `command` below it."""

    async def check() -> bool:
        return command in [_cmdline(p) for p in host.session_processes()]

    return check


def _closed(connection: asyncssh.SSHClientConnection) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return connection.is_closed()

    return check


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""
