"""What an SSH server offers before any cryptography: its version line and the host key types of its KEXINIT.

Reading these by hand (RFC 4253 §4.2 and §7.1) tells a scan which host key types to ask for, so that a type the
server lacks is skipped by knowing, not guessed from a dropped connection (OpenSSH just closes one that asks for a
type it has not got), and it tells "not an SSH server" apart from "does not answer".
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from targets.errors import ScanFailed

CLIENT_VERSION = b"SSH-2.0-ahop_keyscan\r\n"
MAX_LINE = 8192
MAX_LINES_BEFORE_VERSION = 20
"""RFC 4253 lets a server send other lines before its version; more than this many is not SSH."""
MAX_PACKET = 35000
"""The largest packet RFC 4253 §6.1 obliges an implementation to accept."""
MSG_IGNORE, MSG_DEBUG, MSG_KEXINIT = 2, 4, 20
MAX_PACKETS_BEFORE_KEXINIT = 5


@dataclass(frozen=True)
class ServerOffer:
    version: str
    """The server's version line, e.g. `SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6`."""
    host_key_algorithms: tuple[str, ...]
    """The server_host_key_algorithms name-list of its KEXINIT, in its order."""


@dataclass
class Progress:
    """How far a scan got, so that a timeout can say where it stopped."""

    stage: str = "connecting"
    lines_before_version: list[str] | None = None


def where(address: str, port: int) -> str:
    """`address:port`, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def read_server_offer(address: str, port: int, progress: Progress) -> ServerOffer:
    """Connect, read the version line and KEXINIT, close. Raises ScanFailed naming the host and the cause."""
    try:
        reader, writer = await asyncio.open_connection(address, port, limit=MAX_LINE)
    except ConnectionRefusedError as exc:
        raise ScanFailed(f"{where(address, port)}: connection refused (nothing listens there)") from exc
    except OSError as exc:
        raise ScanFailed(f"{where(address, port)}: cannot connect: {exc.strerror or exc}") from exc
    try:
        version = await _read_version(reader, address, port, progress)
        writer.write(CLIENT_VERSION)
        await writer.drain()
        progress.stage = "waiting for the server's key exchange offer (KEXINIT)"
        algorithms = await _read_host_key_algorithms(reader, address, port, version)
        return ServerOffer(version, algorithms)
    except OSError as exc:
        raise ScanFailed(f"{where(address, port)}: the connection failed: {exc.strerror or exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_version(reader: asyncio.StreamReader, address: str, port: int, progress: Progress) -> str:
    progress.stage = "waiting for the server's SSH version line (it accepted the connection but sent nothing)"
    ignored: list[str] = []
    progress.lines_before_version = ignored
    for _ in range(MAX_LINES_BEFORE_VERSION + 1):
        try:
            raw = await reader.readline()
        except ValueError as exc:  # the line exceeds the reader's limit
            raise ScanFailed(
                f"{where(address, port)}: not an SSH server: it sent a line over {MAX_LINE} bytes"
            ) from exc
        if not raw.endswith(b"\n"):
            sent = f"it sent {_shown(ignored[0])} and" if ignored else "it"
            raise ScanFailed(
                f"{where(address, port)}: not an SSH server: {sent} closed the connection without an SSH version line"
            )
        line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if line.startswith("SSH-"):
            if not line.startswith(("SSH-2.0-", "SSH-1.99-")):
                raise ScanFailed(f"{where(address, port)}: not an SSH-2 server: it announces {_shown(line)}")
            return line
        ignored.append(line)
        progress.stage = (
            f"waiting for the server's SSH version line: it sent {_shown(ignored[0])} instead, "
            "so it is probably not an SSH server"
        )
    raise ScanFailed(
        f"{where(address, port)}: not an SSH server: it sent {len(ignored)} lines that are no SSH version, "
        f"the first {_shown(ignored[0])}"
    )


async def _read_host_key_algorithms(
    reader: asyncio.StreamReader, address: str, port: int, version: str
) -> tuple[str, ...]:
    for _ in range(MAX_PACKETS_BEFORE_KEXINIT):
        try:
            header = await reader.readexactly(5)
            length, padding = int.from_bytes(header[:4], "big"), header[4]
            if not padding < length <= MAX_PACKET:
                raise ScanFailed(f"{where(address, port)}: not an SSH server: a packet of impossible length {length}")
            body = await reader.readexactly(length - 1)
        except asyncio.IncompleteReadError as exc:
            raise ScanFailed(
                f"{where(address, port)}: the server ({version}) closed the connection before its key exchange offer"
            ) from exc
        payload = body[: len(body) - padding]
        if payload[:1] == bytes([MSG_KEXINIT]):
            return _host_key_algorithms(payload, address, port)
        if payload[:1] not in (bytes([MSG_IGNORE]), bytes([MSG_DEBUG])):
            break
    raise ScanFailed(f"{where(address, port)}: the server ({version}) sent no key exchange offer (KEXINIT)")


def _host_key_algorithms(payload: bytes, address: str, port: int) -> tuple[str, ...]:
    """The second name-list of a KEXINIT payload: byte 20, a 16-byte cookie, kex_algorithms, host key types, …"""
    offset = 17
    names: list[str] = []
    for _ in range(2):
        length = int.from_bytes(payload[offset : offset + 4], "big")
        value = payload[offset + 4 : offset + 4 + length]
        if len(payload) < offset + 4 or len(value) != length:
            raise ScanFailed(f"{where(address, port)}: the server's key exchange offer (KEXINIT) is truncated")
        names = value.decode("ascii", errors="replace").split(",")
        offset += 4 + length
    return tuple(name for name in names if name)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
