"""Logging in to a managed host: strict host key checking against exactly the pinned keys, a key or a password.

Nothing of the machine that connects takes part: no ~/.ssh/config, known_hosts or default keys, no agent, no
trust on first use. The pinned keys become an in-memory known_hosts for the host's address and port; a host that
shows another key is refused with both fingerprints, so an operator can compare them with the host's console.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import asyncssh

from targets.errors import HostKeyMismatch, LoginRefused, ScanFailed, Unreachable
from targets.host_keys import SCANNED_FAMILIES, HostKey, known_hosts_line, parse_host_key
from targets.server_offer import Progress, read_server_offer, where

SIGNATURE_ALGORITHMS = dict(SCANNED_FAMILIES)
"""Per pinned key type, the host key algorithms of a KEXINIT that would show such a key."""

__all__ = ["Login", "Target", "connect"]


@dataclass(frozen=True)
class Target:
    """A managed host as the inventory knows it: its name, where it listens, who logs in, the keys pinned for it."""

    name: str
    address: str
    port: int
    user: str
    host_keys: tuple[str, ...]
    """Pinned OpenSSH lines `TYPE BASE64`; empty until `ahop host scan-keys NAME` pins them."""

    def __str__(self) -> str:
        return f"{self.name} ({where(self.address, self.port)})"


@dataclass(frozen=True)
class Login:
    """How the user logs in: a private key (with its passphrase when it is encrypted) or a password, never both.
    Its repr shows no secret."""

    private_key: str | None = field(default=None, repr=False)
    """The private key's text (OpenSSH or PEM)."""
    passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.private_key is None) == (self.password is None):
            given = "both a private key and a password" if self.private_key is not None else "neither"
            raise ValueError(f"a login is a private key or a password, exactly one of them; got {given}")
        if self.passphrase is not None and self.private_key is None:
            raise ValueError("a passphrase opens a private key; a login by password has none")

    @property
    def method(self) -> str:
        """What the login tries, in the words of the errors: `public key` or `password`."""
        return "public key" if self.private_key is not None else "password"


class _PinnedKeysOnly(asyncssh.SSHClient):
    """asyncssh asks the client about a host key that is not in known_hosts: the answer is always no, and the
    key is kept so that the refusal can name it."""

    def __init__(self) -> None:
        self.refused_key: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.refused_key = key
        return False


# The bound covers the whole login (TCP, handshake, authentication); a timeout's message names it.
async def connect(target: Target, login: Login, *, timeout: float) -> asyncssh.SSHClientConnection:  # noqa: ASYNC109
    """An SSH connection to `target` as its user, within `timeout` seconds.

    The host must show one of the pinned keys. Raises HostKeyMismatch (none pinned, or another key shown),
    LoginRefused (the host refused the login, or the private key cannot be opened), Unreachable (refused, no
    route, unknown name, timed out, lost during the handshake); HostKeyRefused when a pinned line is not a key.
    A port outside 1-65535 or a timeout not above 0 raises ValueError. The connection names its target in
    `get_extra_info("target")`.
    """
    if not 0 < target.port < 65536:
        raise ValueError(f"an SSH port is between 1 and 65535, not {target.port} (host {target.name})")
    if not timeout > 0:
        raise ValueError(f"a connection's timeout is a number of seconds above 0, not {timeout}")
    if not target.host_keys:
        raise HostKeyMismatch(
            f"{target}: no host key is pinned for it, so it cannot be told from an impostor; "
            f"run `ahop host scan-keys {target.name}` to read and pin its keys (compare them with its console)"
        )
    pinned = [parse_host_key(line) for line in target.host_keys]
    client_key = _client_key(target, login)
    try:
        async with asyncio.timeout(timeout):
            connection = await _login(target, login, pinned, client_key)
    except TimeoutError as exc:
        raise Unreachable(f"{target}: timed out after {timeout:g} s connecting and logging in") from exc
    connection.set_extra_info(target=target)
    return connection


async def _login(
    target: Target, login: Login, pinned: list[HostKey], client_key: asyncssh.SSHKey | None
) -> asyncssh.SSHClientConnection:
    """asyncssh's connect, its errors translated into ours."""
    client = _PinnedKeysOnly()
    try:
        return await asyncssh.connect(
            target.address,
            target.port,
            username=target.user,
            known_hosts=asyncssh.import_known_hosts(known_hosts_line(target.address, target.port, pinned)),
            client_factory=lambda: client,
            client_keys=[client_key] if client_key is not None else None,
            password=login.password,
            preferred_auth="publickey" if client_key is not None else "password",
            config=None,
            agent_path=None,
            agent_forwarding=False,
            gss_auth=False,
            host_based_auth=False,
            kbdint_auth=False,
            x509_trusted_certs=None,
            client_version="ahop",
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyMismatch(_mismatch(target, pinned, client.refused_key)) from exc
    except asyncssh.PermissionDenied as exc:
        raise LoginRefused(_refused(target, login, client_key)) from exc
    except ConnectionRefusedError as exc:
        raise Unreachable(f"{target}: connection refused (nothing listens there)") from exc
    except socket.gaierror as exc:
        raise Unreachable(f"{target}: the address {target.address!r} does not resolve: {exc.strerror}") from exc
    except (asyncssh.Error, ConnectionResetError) as exc:
        # OpenSSH hangs up on a client that allows none of its host key types: say so when that is why.
        await _refuse_if_no_pinned_type(target, pinned)
        reason = exc.reason if isinstance(exc, asyncssh.Error) else exc.strerror
        raise Unreachable(f"{target}: the SSH handshake failed: {reason}") from exc
    except OSError as exc:
        raise Unreachable(f"{target}: cannot connect: {exc.strerror or exc}") from exc


async def _refuse_if_no_pinned_type(target: Target, pinned: list[HostKey]) -> None:
    """Raise HostKeyMismatch when the host offers no host key of a pinned type (read from its KEXINIT)."""
    try:
        offer = await read_server_offer(target.address, target.port, Progress())
    except ScanFailed:
        return  # the handshake's own error says more
    usable = {name for key in pinned for name in SIGNATURE_ALGORITHMS[key.algorithm]}
    if not usable & set(offer.host_key_algorithms):
        raise HostKeyMismatch(
            f"{target} has no host key of a type pinned for it: it offers "
            f"{', '.join(offer.host_key_algorithms) or 'none'}; pinned: {_fingerprints(pinned)}. "
            f"If the host was reinstalled, compare its keys with its console and pin them with "
            f"`ahop host scan-keys {target.name} --replace`"
        )


def _client_key(target: Target, login: Login) -> asyncssh.SSHKey | None:
    """The login's private key, opened; LoginRefused (without any of the key's text) when it cannot be."""
    if login.private_key is None:
        return None
    who = f"{target.user}@{target.address}"
    try:
        return asyncssh.import_private_key(login.private_key, login.passphrase)
    except asyncssh.KeyEncryptionError as exc:
        raise LoginRefused(
            f"{target}: the private key to log in as {who} does not open with the passphrase given"
        ) from exc
    except asyncssh.KeyImportError as exc:
        encrypted = "passphrase" in str(exc).lower()
        problem = "is encrypted and no passphrase was given" if encrypted else "is not a private key asyncssh reads"
        raise LoginRefused(f"{target}: the private key to log in as {who} {problem}") from exc


def _fingerprints(keys: list[HostKey]) -> str:
    return ", ".join(f"{key.fingerprint} ({key.algorithm})" for key in keys)


def _mismatch(target: Target, pinned: list[HostKey], shown: asyncssh.SSHKey | None) -> str:
    if shown is None:
        showed = "a host key that is not pinned for it"
    else:
        algorithm = shown.get_algorithm()
        showed = f"the {algorithm} host key {shown.get_fingerprint('sha256')}, which is not pinned for it"
    return (
        f"{target} showed {showed}; pinned: {_fingerprints(pinned)}. Another machine may answer at that address. "
        f"If the host was reinstalled, compare its keys with its console and pin them with "
        f"`ahop host scan-keys {target.name} --replace`"
    )


def _refused(target: Target, login: Login, client_key: asyncssh.SSHKey | None) -> str:
    method = login.method
    if client_key is not None:
        method += f" {client_key.get_fingerprint('sha256')} ({client_key.get_algorithm()})"
    return f"{target} refused the login as {target.user}@{target.address} by {method}"
