"""Checking a worker's local store against its digests (`ahop worker verify`), and sweeping what does not belong.

Every entry is packed again (hashing only, nothing written) and compared with the digest it is named after. An entry
that no longer matches is removed, unless a task is using it: like eviction, verify never removes an entry in use, so
it is reported and a later verify removes it. Stray files in the store, records of entries that are gone and work
left under tmp/ by a process that died are removed as well, and so is a kept canonical tar (for target hosts)
that is not its digest.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.canonical import Limits
from storage.digest import Digest
from storage.errors import SnapshotRefused
from storage.snapshot import snapshot_directory
from storage.unpack import DEFAULT_LIMITS, file_sha256
from worker.store import ENTRY_NAME, LocalStore
from worker.store_files import lock, try_lock

_VERIFY_LIMITS = Limits(max_bytes=DEFAULT_LIMITS.max_tar_bytes, max_files=DEFAULT_LIMITS.max_files)


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_store` found: digests whose content packs back to them (`ok`), digests whose content does
    not and was removed (`removed`), such digests kept because they were in use (`in_use`, removed by a later
    verify), and stray paths (relative to the root) that were removed (`junk`)."""

    ok: list[Digest]
    removed: list[Digest]
    in_use: list[Digest]
    junk: list[str]

    @property
    def problems(self) -> bool:
        """Whether some entry's content did not match its digest (stray files are only housekeeping)."""
        return bool(self.removed or self.in_use)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: each digest as its 64 hex characters, the name of its entry."""
        digests = {"ok": self.ok, "removed": self.removed, "in_use": self.in_use}
        return {**{key: [digest.hex for digest in value] for key, value in digests.items()}, "junk": self.junk}


def verify_store(store: LocalStore) -> VerifyReport:
    """Re-pack every entry (hashing only) and remove those whose digest no longer matches, plus stray files
    in the store and left-over work under tmp/. Entries in use are checked but only removed when unused."""
    ok: list[Digest] = []
    removed: list[Digest] = []
    in_use: list[Digest] = []
    junk: list[str] = []
    with os.scandir(store.entries_dir) as listing:
        names = sorted(item.name for item in listing)
    for name in names:
        path = store.entries_dir / name
        if not ENTRY_NAME.fullmatch(name) or path.is_symlink() or not path.is_dir():
            junk += store.remove_junk(path)
            continue
        digest = Digest(name)
        descriptor = lock(store.use_lock(digest), shared=True)
        try:
            if not path.is_dir():
                continue  # evicted while we waited
            if _packs_to(path, digest):
                ok.append(digest)
                path.chmod(0o555)
                store.entry_bytes(digest)  # rewrites a lost size record
                junk += _damaged_tar(store, digest)
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                in_use.append(digest)
                continue
            if store.remove_locked(digest):
                removed.append(digest)
        finally:
            os.close(descriptor)
    junk += _sweep_records(store)
    junk += store.clean_tmp()
    return VerifyReport(ok=ok, removed=removed, in_use=in_use, junk=junk)


def _packs_to(path: Path, digest: Digest) -> bool:
    try:
        return snapshot_directory(path, None, limits=_VERIFY_LIMITS).digest == digest
    except SnapshotRefused:  # a tree no canonical tar holds (a fifo, an escaping symlink, …): not the content
        return False


def _damaged_tar(store: LocalStore, digest: Digest) -> list[str]:
    """The kept canonical tar of a sound entry, removed when it is not its digest (packed again at its next use)."""
    tar = store.tar_file(digest)
    try:
        if file_sha256(tar)[0] == digest.hex:
            return []
    except FileNotFoundError:
        return []
    return store.remove_junk(tar)


def _sweep_records(store: LocalStore) -> list[str]:
    """Size records and lock files of digests that have no entry (and that nobody is fetching), and strays."""
    junk: list[str] = []
    folders = ((store.meta_dir, (".json",)), (store.tars_dir, (".tar",)), (store.locks_dir, (".lock", ".fetch")))
    for folder, suffixes in folders:
        with os.scandir(folder) as listing:
            names = sorted(item.name for item in listing)
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not (ENTRY_NAME.fullmatch(stem) and f"{dot}{suffix}" in suffixes):
                junk += store.remove_junk(folder / name)
            elif not store.entry(Digest(stem)).is_dir() and _forget_absent(store, Digest(stem)):
                junk.append(str((folder / name).relative_to(store.root)))
    return junk


def _forget_absent(store: LocalStore, digest: Digest) -> bool:
    """Drop the records of an absent entry unless it is in use (being fetched); True when dropped."""
    descriptor = try_lock(store.use_lock(digest), fcntl.LOCK_EX | fcntl.LOCK_NB)
    if descriptor is None:
        return False
    try:
        if store.entry(digest).is_dir():
            return False
        store.drop_records(digest)
        return True
    finally:
        os.close(descriptor)
