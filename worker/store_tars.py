"""The canonical tar of a store entry, as target hosts receive it: packed again from the verified entry, checked.

The store keeps what it unpacked, not the tar it came as; a host's cache holds the tar itself (its `sha256sum`
checks it against the digest on the host, DESIGN §10). Packing the entry again gives that tar byte for byte
(DESIGN §2: a tree unpacked from a blob packs back to the same digest), which is checked before the tar is kept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from storage.canonical import Limits, write_canonical_tar
from storage.digest import Digest
from storage.errors import IntegrityError, SnapshotRefused
from storage.trees import DirectoryTree
from storage.unpack import DEFAULT_LIMITS

TAR_LIMITS = Limits(max_bytes=DEFAULT_LIMITS.max_tar_bytes, max_files=DEFAULT_LIMITS.max_files)
"""What an entry may hold: whatever the store would have unpacked."""


class _HashingFile:
    """Writes tar bytes to a file and hashes them on the way."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hasher = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        return self.out.write(data)


def pack_entry_tar(entry: Path, digest: Digest, destination: Path, work: Path) -> None:
    """Write the canonical tar of `entry` to `destination` (read-only), by way of `work` (a directory of the same
    filesystem), once it is checked to be `digest`. IntegrityError, and nothing at `destination`, when the entry no
    longer packs to its digest (changed on disk since it was verified)."""
    packed = work / f"{digest.hex}.tar"
    try:
        with packed.open("wb") as out:
            sink = _HashingFile(out)
            write_canonical_tar(DirectoryTree(entry), sink, TAR_LIMITS, str(entry))
    except SnapshotRefused as exc:
        raise IntegrityError(f"the store entry {entry} is no longer a canonical tree of {digest}: {exc}") from exc
    found = Digest.of(sink.hasher)
    if found != digest:
        raise IntegrityError(
            f"the store entry {entry} packs to {found}, not to {digest}: it changed since it was verified; "
            "`ahop worker verify` removes it"
        )
    packed.chmod(0o444)
    os.replace(packed, destination)
