"""SSH host keys: the value pinned per host, read from text an operator gives or from the host itself.

A key is pinned as its OpenSSH public line `TYPE BASE64` (no comment), the form of a `.pub` file and of a
known_hosts entry, so OpenSSH and Ansible can check it with `StrictHostKeyChecking=yes`. Its fingerprint is the
one `ssh-keygen -l` prints, the form an operator compares with what the host's console shows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from dataclasses import dataclass

import asyncssh

from targets.errors import HostKeyRefused, ScanFailed
from targets.server_offer import Progress, read_server_offer, where

__all__ = [
    "HOST_KEY_TYPES",
    "HostKey",
    "HostKeyRefused",
    "ScanFailed",
    "known_hosts_line",
    "parse_host_key",
    "parse_host_keys",
    "scan_host_keys",
]

HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
"""The key types an OpenSSH server has host keys of (DSA is gone from OpenSSH); the order scans return them in."""

SCANNED_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ssh-ed25519", ("ssh-ed25519",)),
    ("ecdsa-sha2-nistp256", ("ecdsa-sha2-nistp256",)),
    ("ecdsa-sha2-nistp384", ("ecdsa-sha2-nistp384",)),
    ("ecdsa-sha2-nistp521", ("ecdsa-sha2-nistp521",)),
    # One RSA key, signed with SHA-2 (the SHA-1 `ssh-rsa` signature is off in OpenSSH since 8.8).
    ("ssh-rsa", ("rsa-sha2-512", "rsa-sha2-256")),
)
"""Per key type, the host key algorithms a handshake may choose to have the server show that key."""

EXPECTED_FORMS = (
    "an OpenSSH public key line `TYPE BASE64 [COMMENT]` (as in /etc/ssh/ssh_host_ed25519_key.pub) or a "
    f"known_hosts / ssh-keyscan line `HOSTS TYPE BASE64`, with TYPE one of {', '.join(HOST_KEY_TYPES)}"
)


@dataclass(frozen=True)
class HostKey:
    """A host's public key, as pinned: its type and its OpenSSH line `TYPE BASE64`."""

    algorithm: str
    public: str

    @property
    def fingerprint(self) -> str:
        """`SHA256:` and the unpadded base64 of the key blob's SHA-256, exactly as `ssh-keygen -l` prints it."""
        blob = base64.b64decode(self.public.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def parse_host_key(text: str) -> HostKey:
    """The host key on one line of a `.pub` file (`TYPE BASE64 [COMMENT]`) or of known_hosts or `ssh-keyscan`
    output (`HOSTS TYPE BASE64`). Anything else raises HostKeyRefused naming what was given and what is expected."""
    line = text.strip()
    if "\n" in line:
        raise HostKeyRefused(f"one host key is one line, got {len(line.splitlines())} lines; expected {EXPECTED_FORMS}")
    fields = line.split()
    if not fields:
        raise HostKeyRefused(f"no host key given (empty text); expected {EXPECTED_FORMS}")
    if fields[0].startswith("@"):
        raise HostKeyRefused(
            f"{fields[0]} lines of known_hosts mark certificate authorities or revoked keys, not a host's key: "
            f"got {_shown(line)}; expected {EXPECTED_FORMS}"
        )
    if fields[0] in HOST_KEY_TYPES:
        key_type, data = fields[0], fields[1:2]
    elif len(fields) > 1 and fields[1] in HOST_KEY_TYPES:
        key_type, data = fields[1], fields[2:3]
    else:
        raise HostKeyRefused(f"no SSH host key type in {_shown(line)}; expected {EXPECTED_FORMS}")
    if not data:
        raise HostKeyRefused(f"{_shown(line)} has no key data after its type {key_type}; expected {EXPECTED_FORMS}")
    return _host_key(key_type, data[0], line)


def parse_host_keys(text: str) -> list[HostKey]:
    """Every host key of a known_hosts file, `ssh-keyscan` output or `.pub` files pasted together (blank and `#`
    lines skipped), in order and de-duplicated. HostKeyRefused names the first bad line by its number."""
    keys: list[HostKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key = parse_host_key(line)
        except HostKeyRefused as exc:
            raise HostKeyRefused(f"line {number}: {exc}") from exc
        if key not in keys:
            keys.append(key)
    if not keys:
        raise HostKeyRefused(f"no host key in the text given (only blank or # lines); expected {EXPECTED_FORMS}")
    return keys


def _host_key(key_type: str, data: str, line: str) -> HostKey:
    try:
        blob = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise HostKeyRefused(
            f"the key data of the {key_type} key in {_shown(line)} is not valid base64 (cut short or damaged?); "
            f"expected {EXPECTED_FORMS}"
        ) from exc
    inner_type = _blob_type(blob)
    if inner_type != key_type:
        raise HostKeyRefused(
            f"{_shown(line)} says {key_type} but its key data is "
            f"{f'a {inner_type} key' if inner_type else 'no SSH key'}; expected {EXPECTED_FORMS}"
        )
    try:
        key = asyncssh.import_public_key(f"{key_type} {data}")
    except ValueError as exc:  # asyncssh's KeyImportError, or cryptography's for an EC point off its curve
        raise HostKeyRefused(
            f"the key data of the {key_type} key in {_shown(line)} is not a valid key (cut short or damaged?): "
            f"{exc}; expected {EXPECTED_FORMS}"
        ) from exc
    return _from_ssh_key(key)


def _blob_type(blob: bytes) -> str | None:
    """The key type a public key blob starts with (an SSH string), or None when it holds none."""
    length = int.from_bytes(blob[:4], "big")
    name = blob[4 : 4 + length]
    if len(blob) < 4 or len(name) != length or not name.isascii():
        return None
    return name.decode("ascii")


def _from_ssh_key(key: asyncssh.SSHKey) -> HostKey:
    algorithm = key.get_algorithm()
    return HostKey(algorithm, f"{algorithm} {base64.b64encode(key.public_data).decode('ascii')}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


# The bound belongs to the scan, not to its caller's scope: a timeout's message says how far the scan got.
async def scan_host_keys(address: str, port: int, *, timeout: float) -> list[HostKey]:  # noqa: ASYNC109
    """Every host key the SSH server at `address:port` offers, in HOST_KEY_TYPES order, de-duplicated.

    The server's KEXINIT says which key types it has; one handshake per type it has (concurrently) makes it show
    that key. The whole scan takes at most `timeout` seconds. ScanFailed names `address:port` and the cause: the
    connection refused or failing, a timeout and where it happened, a server that is not SSH, no usable key type.
    A port outside 1-65535 or a timeout that is not above 0 raises ValueError.
    """
    if not 0 < port < 65536:
        raise ValueError(f"an SSH port is between 1 and 65535, not {port}")
    if not timeout > 0:
        raise ValueError(f"a scan's timeout is a number of seconds above 0, not {timeout}")
    progress = Progress()
    try:
        async with asyncio.timeout(timeout):
            offer = await read_server_offer(address, port, progress)
            wanted = [
                (key_type, offered)
                for key_type, algorithms in SCANNED_FAMILIES
                if (offered := tuple(name for name in algorithms if name in offer.host_key_algorithms))
            ]
            if not wanted:
                raise ScanFailed(
                    f"{where(address, port)}: the SSH server ({offer.version}) has no host key of a type pinned here "
                    f"({', '.join(HOST_KEY_TYPES)}); it offers {', '.join(offer.host_key_algorithms) or 'none'}"
                )
            progress.stage = f"reading the host keys of the SSH server ({offer.version})"
            found = await asyncio.gather(
                *(_shown_key(address, port, key_type, algorithms) for key_type, algorithms in wanted),
                return_exceptions=True,
            )
    except TimeoutError as exc:
        raise ScanFailed(f"{where(address, port)}: timed out after {timeout:g} s {progress.stage}") from exc
    keys: list[HostKey] = []
    for result in found:
        if isinstance(result, BaseException):
            raise result
        if result not in keys:
            keys.append(result)
    return keys


async def _shown_key(address: str, port: int, key_type: str, algorithms: tuple[str, ...]) -> HostKey:
    """The key the server shows in a handshake that allows only `algorithms`."""
    try:
        key = await asyncssh.get_server_host_key(
            address, port, server_host_key_algs=list(algorithms), config=None, client_version="ahop_keyscan"
        )
    except (OSError, asyncssh.Error) as exc:
        raise ScanFailed(
            f"{where(address, port)}: the SSH handshake for its {key_type} host key failed: {exc}"
        ) from exc
    if key is None:
        raise ScanFailed(f"{where(address, port)}: the SSH server showed no host key in a {key_type} handshake")
    return _from_ssh_key(key)


def known_hosts_line(address: str, port: int, keys: list[HostKey]) -> str:
    """The known_hosts lines (one per key, each ending in a newline) that pin `keys` for `address:port`, in the
    `[address]:port` form OpenSSH uses for a port other than 22."""
    host = address if port == 22 else f"[{address}]:{port}"
    return "".join(f"{host} {key.public}\n" for key in keys)
