"""Canonical tar streams (DESIGN §2): members, order, modes and symlink rules, written to any byte sink.

A tree source lists its members (`Entry`, already sorted by the UTF-8 bytes of their paths) and then yields
each member's content in that order; `write_canonical_tar` checks the rules and writes the bytes of
`storage.tarformat`. Memory stays bounded by the sink's buffer, never by the tree.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from storage import tarformat
from storage.errors import LimitExceeded, SnapshotRefused

FILE: Literal["file"] = "file"
SYMLINK: Literal["symlink"] = "symlink"


@dataclass(frozen=True)
class Entry:
    """One member of a tree: a regular file or a symlink, at a canonical relative path."""

    path: str
    kind: Literal["file", "symlink"]
    size: int
    """File length; for a symlink, the length of its target."""
    executable: bool = False


@dataclass(frozen=True)
class Limits:
    """The most a snapshot may hold. The defaults are generous; servers pass their configured limits."""

    max_bytes: int = 1 << 30
    max_files: int = 100_000


class ByteSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class TreeSource(Protocol):
    """What a packer reads: members sorted by path, then their contents in that order."""

    def entries(self) -> list[Entry]: ...

    def contents(self, entries: list[Entry]) -> Iterator[tuple[Entry, Iterable[bytes]]]: ...


# What every filesystem a worker unpacks onto can hold, and what keeps an unpack bounded. The packer refuses
# what the unpacker would refuse, so that nothing imports that no worker can run.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_DEPTH = 32
MAX_TARGET_BYTES = 4095


def check_path(raw: bytes, where: str) -> str:
    """Decode a member path and check it is canonical: relative, `/`-separated, no empty/`.`/`..` parts, not in a
    top-level `.git`, and within the path, name and depth limits."""
    where = where if len(where) <= 200 else where[:200] + "…"
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SnapshotRefused(f"{where}: the path {raw[:200]!r} is not valid UTF-8; rename it") from None
    if not path or path.startswith("/") or "\x00" in path:
        raise SnapshotRefused(f"{where}: the path {path!r} is not a relative path")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SnapshotRefused(f"{where}: the path {path!r} has an empty, '.' or '..' component")
    if parts[0] == ".git":
        raise SnapshotRefused(f"{where}: {path!r} is inside a top-level .git, which a snapshot never holds")
    too_long = len(raw) > MAX_NAME_BYTES and any(len(p.encode()) > MAX_NAME_BYTES for p in parts)
    if too_long or len(raw) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise SnapshotRefused(
            f"{where}: the path {path[:200]!r} is too long: at most {MAX_PATH_BYTES} bytes, {MAX_DEPTH} levels "
            f"and {MAX_NAME_BYTES} bytes a name"
        )
    return path


def check_layout(entries: list[Entry], what: str) -> None:
    """Members sorted and unique, and none inside another member (a file `a` and a file `a/b` cannot both be)."""
    previous = b""
    leaves: set[str] = set()
    for entry in entries:
        key = sort_key(entry.path)
        if key <= previous:
            raise SnapshotRefused(f"{what}: {entry.path!r} is listed twice or out of order; the tree is damaged")
        previous = key
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in leaves:
                raise SnapshotRefused(f"{what}: {entry.path!r} lies inside {'/'.join(parts[:depth])!r}, a file or link")
        leaves.add(entry.path)


def check_symlink(path: str, raw_target: bytes) -> str:
    """The target of a symlink member, if it is relative and stays inside the tree once resolved."""
    try:
        target = raw_target.decode("utf-8")
    except UnicodeDecodeError:
        raise SnapshotRefused(f"symlink {path!r}: its target {raw_target!r} is not valid UTF-8") from None
    if len(raw_target) > MAX_TARGET_BYTES:
        raise SnapshotRefused(f"symlink {path!r}: its target is longer than {MAX_TARGET_BYTES} bytes")
    if not target or target.startswith("/") or "\x00" in target:
        raise SnapshotRefused(f"symlink {path!r} -> {target!r}: targets must be relative paths inside the tree")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise SnapshotRefused(f"symlink {path!r} -> {target!r} leaves the tree; only links inside it are allowed")
    return target


_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit: a cycle never resolves, so it never leaves the tree either


def check_links_stay_inside(links: dict[str, str]) -> None:
    """Refuse a symlink that leaves the tree once the other links it passes through are followed.

    `check_symlink` is lexical and sees one link at a time; `s/up -> ..` with `t -> s/up/..` passes it link by
    link, yet `t` resolves to the tree's parent. This walks every target through the tree's own links.
    """
    for path, target in links.items():
        parts = path.split("/")[:-1]
        pending = target.split("/")
        hops = 0
        while pending and hops <= _MAX_LINK_HOPS:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise SnapshotRefused(
                        f"symlink {path!r} -> {target!r} leaves the tree once the links it passes through are followed"
                    )
                parts.pop()
                continue
            parts.append(part)
            via = "/".join(parts)
            if via in links:
                hops += 1
                parts.pop()
                pending = links[via].split("/") + pending


def sort_key(path: str) -> bytes:
    """Members are ordered by the UTF-8 bytes of their paths (not by Python's code-point order of str)."""
    return path.encode("utf-8")


def check_limits(entries: list[Entry], limits: Limits, what: str) -> None:
    """Refuse a tree whose tar would exceed the limits, before any content is read."""
    total = tarformat.archive_size((entry.path, entry.size if entry.kind == FILE else 0) for entry in entries)
    if len(entries) > limits.max_files or total > limits.max_bytes:
        raise LimitExceeded(
            f"{what} has {len(entries):,} files and makes a tar of {total:,} bytes; "
            f"the limit is {limits.max_files:,} files and {limits.max_bytes:,} bytes"
        )


@dataclass
class TarStats:
    files: int = 0
    tar_size: int = 0


def write_canonical_tar(source: TreeSource, sink: ByteSink, limits: Limits, what: str) -> TarStats:
    """Write the canonical tar of `source` into `sink`; refuse trees over `limits` before reading any content."""
    entries = source.entries()
    check_layout(entries, what)
    check_limits(entries, limits, what)
    stats = TarStats()
    links: dict[str, str] = {}
    for entry, chunks in source.contents(entries):
        if entry.kind == SYMLINK:
            target = check_symlink(entry.path, b"".join(chunks))
            links[entry.path] = target
            block = tarformat.header(entry.path, tarformat.MODE_SYMLINK, 0, tarformat.SYMLINK, target)
            sink.write(block)
            stats.tar_size += len(block)
        else:
            mode = tarformat.MODE_EXECUTABLE if entry.executable else tarformat.MODE_FILE
            block = tarformat.header(entry.path, mode, entry.size, tarformat.REGULAR)
            sink.write(block)
            written = 0
            for chunk in chunks:
                sink.write(chunk)
                written += len(chunk)
            if written != entry.size:
                raise SnapshotRefused(f"{entry.path!r} changed while it was read ({entry.size} → {written} bytes)")
            pad = tarformat.padding(written)
            sink.write(pad)
            stats.tar_size += len(block) + written + len(pad)
        stats.files += 1
    check_links_stay_inside(links)
    end = tarformat.end_of_archive(stats.tar_size)
    sink.write(end)
    stats.tar_size += len(end)
    return stats
