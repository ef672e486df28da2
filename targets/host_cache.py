"""Template content on a managed host, by digest: a cache of canonical tars checked on every use, and private
copies of them for runs.

Layout under the root (default `~/.cache/ahop`, the login user's home; directories 0700):

    sha256/<hex>        the canonical tar (uncompressed) whose sha256 is <hex>, mode 0400
    sha256/.incoming.*  a tar on its way in, renamed to <hex> once the host's sha256sum agrees
    runs/<32 hex>/      a run's private copy: the tar extracted with the host's `tar`

The host's own `sha256sum` decides whether a cached tar is its digest, on every use: a warm cache costs one
command. A tar is sent as the standard input of a `cat >` (one command: measured faster than SFTP for a template
tar, see docs/design.md §10), checked, then renamed into place, so a reader never sees half a file and a tampered
copy is replaced whole. Each script below is a constant run by `sh -c`; what varies reaches it as positional
parameters, each quoted, except the `~` that starts the root, which the login shell expands to the user's home.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncssh

from storage.digest import Digest
from targets.errors import DeliveryFailed, NotCached, Unreachable

__all__ = ["DEFAULT_ROOT", "Delivery", "ensure_content", "private_copy", "remove_run"]

DEFAULT_ROOT = "~/.cache/ahop"
_CHUNK = 256 * 1024
_RUN_NAME = re.compile(r"[0-9a-f]{32}")

_CHECK = """
f="$1/sha256/$2"
if [ -f "$f" ] && [ ! -L "$f" ]; then sha256sum < "$f"; else echo absent; fi
"""
"""Prints the cached tar's sha256 (`HEX  -`), or `absent`."""

_STORE = """
set -eu
umask 077
dir="$1/sha256"
mkdir -p "$dir"
chmod 700 "$dir"
incoming=$(mktemp "$dir/.incoming.XXXXXXXXXX")
trap 'rm -f "$incoming"' EXIT
cat > "$incoming"
arrived=$(sha256sum < "$incoming")
arrived=${arrived%% *}
if [ "$arrived" != "$2" ]; then echo "$arrived"; exit 3; fi
chmod 400 "$incoming"
mv -f -T "$incoming" "$dir/$2"
trap - EXIT
"""
"""Stores standard input as sha256/<hex> when the host's sha256sum of it is <hex>; else exit 3, printing it."""
_STORED_OTHER = 3

_EXTRACT = """
set -eu
umask 077
f="$1/sha256/$2"
if [ ! -f "$f" ] || [ -L "$f" ]; then echo absent; exit 4; fi
cached=$(sha256sum < "$f")
cached=${cached%% *}
if [ "$cached" != "$2" ]; then echo "$cached"; exit 4; fi
mkdir -p "$1/runs"
chmod 700 "$1/runs"
run="$1/runs/$3"
mkdir "$run"
trap 'rm -rf "$run"' EXIT
tar -x --no-same-owner -f "$f" -C "$run"
trap - EXIT
printf '%s\\n' "$run"
"""
"""Extracts the cached tar, when it is its digest, into a new runs/<name> and prints that path; else exit 4."""
_NOT_CACHED = 4

_REMOVE = """
set -eu
run="$1/runs/$2"
if [ "$run" != "$3" ]; then echo "$1/runs"; exit 6; fi
if [ -L "$run" ]; then rm -f "$run"
elif [ -e "$run" ]; then chmod -R u+rwX "$run" || true; rm -rf "$run"
fi
"""
"""Removes runs/<name> when that is the path given (a run may have made its files read-only); else exit 6."""
_NOT_A_RUN = 6


@dataclass(frozen=True)
class Delivery:
    """What `ensure_content` did on the host."""

    sent: bool
    """The tar was sent: the host had no intact copy."""
    replaced: bool
    """A copy with another sha256 was there (tampered with or damaged) and is replaced."""
    bytes_sent: int


async def ensure_content(
    conn: asyncssh.SSHClientConnection, digest: str | Digest, tar: Path, *, root: str = DEFAULT_ROOT
) -> Delivery:
    """Make the host's cache hold `tar`, the local canonical tar whose sha256 is `digest`.

    One command when the host holds it: its sha256sum of sha256/<hex> is the digest, and nothing is sent. Else
    the tar is sent and stored (replacing a copy with another sha256). A digest not of the form
    `sha256:<64 lowercase hex>` raises InvalidDigest, a root that is not absolute or `~/…` ValueError, both
    before any command runs. DeliveryFailed when what arrived is not the digest (the local tar's own sha256 is
    named when that is the cause) or the host could not store it; nothing is left in place then. Unreachable
    when the connection fails.
    """
    wanted = _digest(digest)
    root_word = _root_word(root)
    size = (await asyncio.to_thread(tar.stat)).st_size
    cached = await _output(conn, _CHECK, root_word, wanted.hex, doing=f"checking its cached {wanted}")
    if cached.split()[:1] == [wanted.hex]:
        return Delivery(sent=False, replaced=False, bytes_sent=0)
    await _store(conn, wanted, tar, root_word)
    return Delivery(sent=True, replaced=cached != "absent", bytes_sent=size)


async def private_copy(conn: asyncssh.SSHClientConnection, digest: str | Digest, *, root: str = DEFAULT_ROOT) -> str:
    """A new run directory `<root>/runs/<32 hex>` (0700) holding the cached tar of `digest`, extracted by the
    host's `tar`; its absolute path. The cached tar is checked first: NotCached when the host holds no copy, or
    one that is not its digest (deliver it with `ensure_content` again); DeliveryFailed when the host's tar
    fails (a full disk); no run directory is left then. Unreachable when the connection fails."""
    wanted = _digest(digest)
    root_word = _root_word(root)
    name = secrets.token_hex(16)
    result = await _exec(conn, _command(_EXTRACT, root_word, wanted.hex, name), doing=f"copying {wanted} for a run")
    answer = _text(result.stdout).strip()
    if result.exit_status == _NOT_CACHED:
        held = "no copy" if answer == "absent" else f"a copy whose sha256 is {answer}"
        raise NotCached(
            f"{_host(conn)}: its cache under {root} holds {held} of {wanted}; deliver it (ensure_content) first"
        )
    _check(conn, result, f"copying {wanted} for a run")
    return answer


async def remove_run(conn: asyncssh.SSHClientConnection, path: str, *, root: str = DEFAULT_ROOT) -> None:
    """Remove the run directory `path` that `private_copy` answered, with everything in it; nothing when it is
    gone already. Anything else than `<root>/runs/<32 hex>` raises ValueError (a path of the wrong form before
    any command runs)."""
    root_word = _root_word(root)
    given = PurePosixPath(path)
    if not (given.is_absolute() and _RUN_NAME.fullmatch(given.name) and path == f"{given.parent}/{given.name}"):
        raise ValueError(f"{path!r} is not a run directory: expected {root}/runs/<32 lowercase hex>")
    result = await _exec(conn, _command(_REMOVE, root_word, given.name, path), doing=f"removing the run {path}")
    if result.exit_status == _NOT_A_RUN:
        runs = _text(result.stdout).strip()
        raise ValueError(f"{path!r} is not a run directory of the cache under {root}: expected {runs}/{given.name}")
    _check(conn, result, f"removing the run {path}")


def _digest(digest: str | Digest) -> Digest:
    return digest if isinstance(digest, Digest) else Digest.parse(digest)


def _root_word(root: str) -> str:
    """`root` as one shell word: quoted, but for a leading `~` left for the login shell to expand."""
    parts = root.split("/")
    if not root or "\0" in root or ".." in parts or parts[0] not in ("", "~") or root.strip("/") == "":
        raise ValueError(
            f"a cache root is an absolute path or one under the login user's home (`~/…`), without `..`; got {root!r}"
        )
    if parts[0] == "~":
        rest = "/".join(part for part in parts[1:] if part)
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote("/" + "/".join(part for part in parts if part))


def _command(script: str, root_word: str, *arguments: str) -> str:
    return " ".join(["sh", "-c", shlex.quote(script), "sh", root_word, *(shlex.quote(word) for word in arguments)])


async def _store(conn: asyncssh.SSHClientConnection, wanted: Digest, tar: Path, root_word: str) -> None:
    """Send `tar` into the store script, hashing it on the way so a wrong local tar is named as the cause."""
    doing = f"storing {wanted}"
    hasher = hashlib.sha256()
    try:
        async with conn.create_process(_command(_STORE, root_word, wanted.hex), encoding=None) as process:
            try:
                with await asyncio.to_thread(tar.open, "rb") as source:
                    while chunk := await asyncio.to_thread(source.read, _CHUNK):
                        hasher.update(chunk)
                        process.stdin.write(chunk)
                        await process.stdin.drain()
                process.stdin.write_eof()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the script ended early: its exit status and errors say why
            result = await process.wait()
    except (OSError, asyncssh.Error) as exc:
        raise Unreachable(f"{_host(conn)}: the connection failed {doing}: {exc}") from exc
    if result.exit_status == _STORED_OTHER:
        arrived = _text(result.stdout).strip()
        if hasher.hexdigest() != wanted.hex:
            raise DeliveryFailed(
                f"{_host(conn)}: the local tar {tar} is not {wanted}: its sha256 is {hasher.hexdigest()}; "
                "nothing was stored"
            )
        raise DeliveryFailed(
            f"{_host(conn)}: the copy of {wanted} that arrived has sha256 {arrived}; nothing was stored"
        )
    _check(conn, result, doing)


async def _exec(conn: asyncssh.SSHClientConnection, command: str, *, doing: str) -> asyncssh.SSHCompletedProcess:
    try:
        return await conn.run(command, check=False)
    except (OSError, asyncssh.Error) as exc:
        raise Unreachable(f"{_host(conn)}: the connection failed {doing}: {exc}") from exc


async def _output(conn: asyncssh.SSHClientConnection, script: str, root_word: str, *arguments: str, doing: str) -> str:
    result = await _exec(conn, _command(script, root_word, *arguments), doing=doing)
    _check(conn, result, doing)
    return _text(result.stdout).strip()


def _check(conn: asyncssh.SSHClientConnection, result: asyncssh.SSHCompletedProcess, doing: str) -> None:
    if result.exit_status != 0:
        status = f"exit {result.exit_status}" if result.exit_status is not None else f"signal {result.exit_signal}"
        errors = _text(result.stderr).strip() or "no message"
        raise DeliveryFailed(f"{_host(conn)}: {doing} failed ({status}): {errors}")


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data or ""


def _host(conn: asyncssh.SSHClientConnection) -> str:
    """The host by its inventory name when `targets.connect` made the connection, else by `address:port`."""
    target = conn.get_extra_info("target")
    if target is not None:
        return str(target)
    address, port = conn.get_extra_info("peername", ("?", 0))[:2]
    return f"{address}:{port}"
