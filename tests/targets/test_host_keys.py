"""Host keys: read from real OpenSSH servers, parsed from the lines operators paste, written for OpenSSH to check.

OpenSSH's own tools are the independent reference: `ssh-keygen -lf` for fingerprints, `ssh-keyscan` for what a
server shows, `ssh` with StrictHostKeyChecking=yes for the known_hosts lines.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from targets.host_keys import (
    HostKey,
    HostKeyRefused,
    ScanFailed,
    known_hosts_line,
    parse_host_key,
    parse_host_keys,
    scan_host_keys,
)
from tests.support.ssh_hosts import TargetHost, target_hosts
from tests.support.ssh_keys import ssh_keygen_fingerprint

SCAN_TIMEOUT = 30.0
"""Bound for scans that should succeed: only catches hangs."""
SHORT_TIMEOUT = 2.0
"""The timeout a scan of a host that does not answer is given (the message must name it)."""


def keyscan(host: TargetHost) -> str:
    """`ssh-keyscan -p PORT ADDRESS` output: the host's keys as OpenSSH reads them."""
    result = subprocess.run(
        ["ssh-keyscan", "-T", "30", "-p", str(host.port), host.address],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


async def test_a_scan_returns_exactly_the_host_keys_of_that_sshd(ssh_hosts: list[TargetHost]) -> None:
    for host in ssh_hosts:
        keys = await scan_host_keys(host.address, host.port, timeout=SCAN_TIMEOUT)

        assert [key.public for key in keys] == host.host_keys
        assert [key.algorithm for key in keys] == ["ssh-ed25519", "ssh-rsa"]
    assert len({key for host in ssh_hosts for key in host.host_keys}) == 2 * len(
        ssh_hosts
    )  # each host has keys of its own


async def test_fingerprints_are_those_ssh_keygen_prints(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    keys = await scan_host_keys(host.address, host.port, timeout=SCAN_TIMEOUT)

    assert [key.fingerprint for key in keys] == [ssh_keygen_fingerprint(path) for path in host.host_key_files]
    assert all(key.fingerprint.startswith("SHA256:") and not key.fingerprint.endswith("=") for key in keys)


async def test_a_scan_shows_what_ssh_keyscan_shows(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[1]
    scanned = await scan_host_keys(host.address, host.port, timeout=SCAN_TIMEOUT)
    output = keyscan(host)

    assert all(line.startswith(f"[{host.address}]:{host.port} ") for line in output.splitlines())
    assert sorted(parse_host_keys(output), key=str) == sorted(scanned, key=str)
    assert sorted((parse_host_key(line) for line in output.splitlines()), key=str) == sorted(scanned, key=str)


@pytest.mark.parametrize(
    ("kinds", "algorithms"),
    [
        (("ecdsa256", "ecdsa384", "ecdsa521"), ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"]),
        (("ed25519",), ["ssh-ed25519"]),
        (("rsa", "ecdsa384"), ["ecdsa-sha2-nistp384", "ssh-rsa"]),
    ],
)
async def test_a_scan_finds_every_key_type_the_host_has_and_skips_those_it_lacks(
    tmp_path: Path, kinds: tuple[str, ...], algorithms: list[str]
) -> None:
    with target_hosts(tmp_path, 1, host_key_kinds=kinds) as (host,):
        keys = await scan_host_keys(host.address, host.port, timeout=SCAN_TIMEOUT)
        shown_by_openssh = parse_host_keys(keyscan(host))

    assert [key.algorithm for key in keys] == algorithms  # in HOST_KEY_TYPES order, whatever the server's
    assert sorted(key.public for key in keys) == sorted(host.host_keys)
    # ssh-keyscan asks for one ECDSA key of whichever size the server picks; the scan asks for each size.
    assert set(shown_by_openssh) <= set(keys)
    assert {key.algorithm for key in shown_by_openssh} >= {"ssh-ed25519", "ssh-rsa"} & set(algorithms)


def test_a_pub_file_and_a_known_hosts_line_give_the_same_key(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    pub_text = host.host_key_files[0].read_text()  # `ssh-ed25519 BASE64 host-1-host-key\n`
    known_hosts = f"[{host.address}]:{host.port},other.example {host.host_keys[0]}"

    from_pub = parse_host_key(pub_text)

    assert from_pub == HostKey("ssh-ed25519", host.host_keys[0])
    assert parse_host_key(known_hosts) == from_pub
    assert parse_host_key(f"  {host.host_keys[0]}  ") == from_pub


def test_a_hashed_known_hosts_line_is_read(ssh_hosts: list[TargetHost], tmp_path: Path) -> None:
    host = ssh_hosts[0]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line(host.address, host.port, [parse_host_key(line) for line in host.host_keys]))
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known_hosts)], capture_output=True, check=True)
    hashed = known_hosts.read_text()

    assert hashed.startswith("|1|")
    assert host.address not in hashed
    assert [key.public for key in parse_host_keys(hashed)] == host.host_keys


def _ed25519_line(ssh_hosts: list[TargetHost]) -> str:
    return ssh_hosts[0].host_keys[0]


def _rsa_data(ssh_hosts: list[TargetHost]) -> str:
    return ssh_hosts[0].host_keys[1].split()[1]


REFUSED: list[tuple[str, Callable[[list[TargetHost]], str], str]] = [
    ("garbage", lambda ssh_hosts: "not a key at all", "no SSH host key type in 'not a key at all'"),
    ("empty", lambda ssh_hosts: "  \n", "no host key given (empty text)"),
    (
        "unknown type",
        lambda ssh_hosts: "ssh-foo " + _ed25519_line(ssh_hosts).split()[1],
        "no SSH host key type in 'ssh-foo AAAA",
    ),
    ("type without data", lambda ssh_hosts: "host.example ssh-ed25519", "has no key data after its type ssh-ed25519"),
    (
        "base64 cut short",
        lambda ssh_hosts: _ed25519_line(ssh_hosts)[:-3],
        "is not valid base64 (cut short or damaged?)",
    ),
    ("key cut short", lambda ssh_hosts: _ed25519_line(ssh_hosts)[:-8], "is not a valid key (cut short or damaged?)"),
    ("not base64", lambda ssh_hosts: "ssh-ed25519 AAAA$$$$", "is not valid base64"),
    (
        "type of another key",
        lambda ssh_hosts: "ssh-ed25519 " + _rsa_data(ssh_hosts),
        "says ssh-ed25519 but its key data is a ssh-rsa key",
    ),
    ("two lines", lambda ssh_hosts: "\n".join(ssh_hosts[0].host_keys), "one host key is one line, got 2 lines"),
    (
        "certificate authority",
        lambda ssh_hosts: "@cert-authority *.example " + _ed25519_line(ssh_hosts),
        "@cert-authority lines of known_hosts mark certificate authorities",
    ),
]


@pytest.mark.parametrize(
    ("given", "reason"), [(make, reason) for _, make, reason in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_text_that_is_no_host_key_is_refused_saying_what_was_wrong_and_what_is_expected(
    ssh_hosts: list[TargetHost], given: Callable[[list[TargetHost]], str], reason: str
) -> None:
    with pytest.raises(HostKeyRefused) as refused:
        parse_host_key(given(ssh_hosts))

    message = str(refused.value)
    assert reason in message
    assert "expected an OpenSSH public key line `TYPE BASE64 [COMMENT]`" in message
    assert "known_hosts / ssh-keyscan line `HOSTS TYPE BASE64`" in message
    assert isinstance(refused.value, ValueError)


def test_an_ecdsa_key_whose_point_is_off_its_curve_is_refused(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ecdsa", "-f", str(tmp_path / "key")], check=True)
    key_type, data, *_ = (tmp_path / "key.pub").read_text().split()
    blob = bytearray(base64.b64decode(data))
    blob[-5] ^= 0xFF  # a byte of the point's y coordinate: the length and type stay right
    damaged = f"{key_type} {base64.b64encode(bytes(blob)).decode()}"

    with pytest.raises(HostKeyRefused, match=r"^the key data of the ecdsa-sha2-nistp256 key in .* is not a valid key"):
        parse_host_key(damaged)
    assert parse_host_key(f"{key_type} {data}").algorithm == "ecdsa-sha2-nistp256"


def test_a_bad_line_among_many_is_named_by_its_number(ssh_hosts: list[TargetHost]) -> None:
    text = f"# {ssh_hosts[0].address} SSH-2.0-OpenSSH\n{ssh_hosts[0].host_keys[0]}\n\nhost.example ssh-rsa AAAA!\n"

    with pytest.raises(
        HostKeyRefused, match=r"^line 4: the key data of the ssh-rsa key in 'host.example ssh-rsa AAAA!'"
    ):
        parse_host_keys(text)
    with pytest.raises(HostKeyRefused, match="no host key in the text given"):
        parse_host_keys("# only a comment\n\n")


def test_known_hosts_lines_name_the_port_unless_it_is_22(ssh_hosts: list[TargetHost]) -> None:
    key = parse_host_key(ssh_hosts[0].host_keys[0])

    assert known_hosts_line("10.0.0.5", 22, [key]) == f"10.0.0.5 {key.public}\n"
    assert known_hosts_line("10.0.0.5", 2222, [key]) == f"[10.0.0.5]:2222 {key.public}\n"
    assert known_hosts_line("fd00::5", 2222, [key]) == f"[fd00::5]:2222 {key.public}\n"


def ssh_with_known_hosts(host: TargetHost, known_hosts: Path) -> subprocess.CompletedProcess[str]:
    """OpenSSH's `ssh` as Ansible would run it: strict host key checking against `known_hosts`, no prompts."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(host.client_key),
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
            "id -un",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_openssh_accepts_the_host_by_its_scanned_known_hosts_lines_and_refuses_another_hosts(
    ssh_hosts: list[TargetHost], tmp_path: Path
) -> None:
    host, other = ssh_hosts[0], ssh_hosts[2]
    pinned = tmp_path / "known_hosts"
    pinned.write_text(
        known_hosts_line(host.address, host.port, await scan_host_keys(host.address, host.port, timeout=SCAN_TIMEOUT))
    )
    wrong = tmp_path / "known_hosts_of_another"
    wrong.write_text(
        known_hosts_line(host.address, host.port, await scan_host_keys(other.address, other.port, timeout=SCAN_TIMEOUT))
    )

    accepted = ssh_with_known_hosts(host, pinned)
    refused = ssh_with_known_hosts(host, wrong)

    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == host.user
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


@pytest.mark.parametrize(
    ("port", "seconds", "message"),
    [
        (70000, SCAN_TIMEOUT, "an SSH port is between 1 and 65535, not 70000"),
        (0, SCAN_TIMEOUT, "an SSH port is between 1 and 65535, not 0"),
        (22, 0, "a scan's timeout is a number of seconds above 0, not 0"),
    ],
)
async def test_a_port_or_timeout_out_of_range_is_refused_before_any_connection(
    port: int, seconds: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        await scan_host_keys("127.0.0.1", port, timeout=seconds)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound (so nobody else takes it) but does not listen: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_port_where_nothing_listens_fails_the_scan_as_refused(closed_port: int) -> None:
    with pytest.raises(ScanFailed) as failed:
        await scan_host_keys("127.0.0.1", closed_port, timeout=SCAN_TIMEOUT)

    assert str(failed.value) == f"127.0.0.1:{closed_port}: connection refused (nothing listens there)"


async def test_a_stopped_host_fails_the_scan_as_refused(ssh_host: TargetHost) -> None:
    ssh_host.stop()

    with pytest.raises(ScanFailed, match="connection refused") as failed:
        await scan_host_keys(ssh_host.address, ssh_host.port, timeout=SCAN_TIMEOUT)
    assert f"{ssh_host.address}:{ssh_host.port}" in str(failed.value)


@asynccontextmanager
async def greeting_server(greeting: bytes, *, then_close: bool, after_reply: bool = False) -> AsyncIterator[int]:
    """A TCP server that sends `greeting` to each client, then hangs up (once the client has sent a line, with
    `after_reply`: what it sends unread would make the hang-up a reset) or stays silent until the client goes."""
    handlers: set[asyncio.Task[None]] = set()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            await writer.drain()
            if after_reply:
                await reader.readline()
            if not then_close:
                await reader.read()
        finally:
            writer.close()

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(greet(reader, writer))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for task in list(handlers):
            task.cancel()


@pytest.mark.parametrize("then_close", [True, False], ids=["then-closes", "then-stays-silent"])
async def test_a_server_that_is_not_ssh_fails_the_scan_saying_so(then_close: bool) -> None:
    async with greeting_server(b"hello\r\n", then_close=then_close) as port:
        with pytest.raises(ScanFailed) as failed:
            await scan_host_keys("127.0.0.1", port, timeout=SHORT_TIMEOUT)

    message = str(failed.value)
    assert message.startswith(f"127.0.0.1:{port}: ")
    assert "not an SSH server" in message
    assert "it sent 'hello'" in message
    if not then_close:
        assert f"timed out after {SHORT_TIMEOUT:g} s" in message


@pytest.mark.parametrize(
    ("greeting", "cause"),
    [
        (b"SSH-1.5-OldServer\r\n", "not an SSH-2 server: it announces 'SSH-1.5-OldServer'"),
        (b"SSH-2.0-Gone\r\n", "the server (SSH-2.0-Gone) closed the connection before its key exchange offer"),
        (b"SSH-2.0-Odd\r\n" + (10**6).to_bytes(4, "big") + b"\x04", "not an SSH server: a packet of impossible length"),
    ],
    ids=["ssh-1", "closes-after-version", "absurd-packet"],
)
async def test_a_server_that_breaks_off_the_handshake_fails_the_scan_naming_why(greeting: bytes, cause: str) -> None:
    async with greeting_server(greeting, then_close=True, after_reply=greeting.startswith(b"SSH-2.0-")) as port:
        with pytest.raises(ScanFailed) as failed:
            await scan_host_keys("127.0.0.1", port, timeout=SCAN_TIMEOUT)

    assert str(failed.value).startswith(f"127.0.0.1:{port}: {cause}")


async def test_a_paused_host_fails_the_scan_when_the_timeout_is_over(ssh_host: TargetHost) -> None:
    ssh_host.pause()
    try:
        with pytest.raises(ScanFailed) as failed:
            await scan_host_keys(ssh_host.address, ssh_host.port, timeout=SHORT_TIMEOUT)
    finally:
        ssh_host.resume()

    assert str(failed.value) == (
        f"{ssh_host.address}:{ssh_host.port}: timed out after 2 s waiting for the server's SSH version line "
        "(it accepted the connection but sent nothing)"
    )
    assert [key.public for key in await scan_host_keys(ssh_host.address, ssh_host.port, timeout=SCAN_TIMEOUT)] == (
        ssh_host.host_keys
    )  # the same host, answering again, scans fine
