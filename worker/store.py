"""The worker's local store (DESIGN §4): blobs fetched by digest, verified, unpacked read-only and cached under a root.

Layout under the root, which several worker processes on one host may share:

    store/sha256/<hex>/          unpacked content of one digest, read-only; appears only by one `rename`
    store/meta/<hex>.json        its size: {"bytes": sum of file sizes, "files": regular files}
    store/locks/<hex>.lock       held shared (flock) while the entry is in use; its mtime is the entry's last use
    store/locks/<hex>.fetch      held exclusively by the one process or thread fetching the digest
    store/tars/<hex>.tar         the entry's canonical tar, packed again for target hosts (`worker.store_tars`)
    store/evict.lock             one eviction at a time on the host
    templates/<tenant>/<code>    symlink to the store entry of the template's latest digest used here
    runs/                        private working copies of running tasks (`worker.rundir`'s)
    tmp/<random>/                one download, unpack or removal in progress, flocked by its owner

Correctness never depends on the locks: an entry is only ever created by renaming a fully verified directory into
place, so a lock that fails to exclude costs a second download, never a partial entry. The locks make concurrent
users of one digest download it once, and keep eviction away from entries in use.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from storage.blobstore import BlobStore
from storage.digest import Digest
from storage.unpack import unpack_file
from worker.metrics import WorkerMetrics, download_result
from worker.protocol import BlobRef
from worker.store_files import lock, remove_tree, seal, touch, try_lock
from worker.store_tars import pack_entry_tar

ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
"""The name of a store entry and the stem of its records: the 64 hex characters of its digest."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
TMP_GRACE = 60.0
"""Seconds before an unlocked item under tmp/ counts as left over (it covers the instant between mkdir and flock)."""


@dataclass(frozen=True)
class StoreStats:
    """How much the store holds: bytes of file content, and entries."""

    bytes: int
    entries: int


class LocalStore:
    """The store under `root`, filled from `blobs`, capped at `max_bytes` of content when given. Thread-safe.
    Counts its hits, misses and downloads into `metrics` (a registry nobody serves when not given).

    Checking the entries against their digests is `worker.store_verify`; it works through the record and removal
    methods below, under the same locks."""

    def __init__(
        self,
        root: Path,
        blobs: BlobStore,
        *,
        max_bytes: int | None = None,
        tmp_grace: float = TMP_GRACE,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be zero or more bytes of content, or None for no cap; got {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self.tmp_grace = tmp_grace
        self.metrics = metrics or WorkerMetrics()
        self.downloads = 0
        """Blobs this instance fetched from S3."""
        self._blobs = blobs
        self._counter = threading.Lock()
        self.entries_dir = root / "store" / "sha256"
        self.meta_dir = root / "store" / "meta"
        self.locks_dir = root / "store" / "locks"
        self.tars_dir = root / "store" / "tars"
        self.templates_dir = root / "templates"
        self.runs_dir = root / "runs"
        self.tmp_dir = root / "tmp"
        for directory in (
            self.entries_dir,
            self.meta_dir,
            self.locks_dir,
            self.tars_dir,
            self.templates_dir,
            self.runs_dir,
            self.tmp_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        self.runs_dir.chmod(0o711)  # run-as users may enter their own run directory, never list the others
        self.clean_tmp()

    def entry(self, digest: Digest) -> Path:
        """Where the content of `digest` lives (present or not)."""
        return self.entries_dir / digest.hex

    def use_lock(self, digest: Digest) -> Path:
        """The lock file held shared while the entry of `digest` is in use, and exclusively to remove it."""
        return self.locks_dir / f"{digest.hex}.lock"

    def tar_file(self, digest: Digest) -> Path:
        """Where the canonical tar of `digest` is kept once `canonical_tar` packed it (present or not)."""
        return self.tars_dir / f"{digest.hex}.tar"

    def canonical_tar(self, digest: Digest) -> Path:
        """The canonical tar of the entry of `digest`, which the caller holds in use (inside `use`): what a target
        host's cache receives. Packed from the entry the first time, checked against the digest, then kept until
        the entry goes (eviction, verify). IntegrityError when the entry no longer packs to its digest."""
        tar = self.tar_file(digest)
        if not tar.is_file():
            with self._work_dir() as work:
                pack_entry_tar(self.entry(digest), digest, tar, work)
        return tar

    def _fetch_lock(self, digest: Digest) -> Path:
        return self.locks_dir / f"{digest.hex}.fetch"

    def _meta_file(self, digest: Digest) -> Path:
        return self.meta_dir / f"{digest.hex}.json"

    @contextmanager
    def use(self, blob: BlobRef) -> Iterator[Path]:
        """The store entry of `blob`, fetched and verified if absent, held in use until the block ends:
        eviction (in this process or another process sharing the root) never removes an entry in use.

        A corrupt blob raises `IntegrityError`, a missing one `BlobNotFound` (storage errors name the digest's key);
        either way nothing of it is left in the store."""
        hit = self.entry(blob.digest).is_dir()
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).inc()
        with self._using(blob) as (path, _):
            yield path

    def prefetch(self, blob: BlobRef) -> bool:
        """Make sure `blob` is in the store; True when this call had to download it."""
        with self._using(blob) as (_, downloaded):
            return downloaded

    @contextmanager
    def _using(self, blob: BlobRef) -> Iterator[tuple[Path, bool]]:
        digest = blob.digest
        descriptor = lock(self.use_lock(digest), shared=True)
        path = self.entry(digest)
        try:
            touch(descriptor)
            downloaded = False
            if not path.is_dir():
                downloaded = self._fetch_once(blob, path)
                if downloaded and self.max_bytes is not None:
                    self.evict()
            yield path, downloaded
            touch(descriptor)
        finally:
            if not path.is_dir():  # the fetch failed: leave no lock files behind if nobody else waits on them
                self._forget(digest, descriptor)
            os.close(descriptor)

    def _fetch_once(self, blob: BlobRef, path: Path) -> bool:
        descriptor = lock(self._fetch_lock(blob.digest))
        try:
            if path.is_dir():  # fetched by another thread or process while we waited
                return False
            try:
                self._fetch(blob, path)
            except Exception as exc:
                self.metrics.downloads.labels(result=download_result(exc)).inc()
                raise
            self.metrics.downloads.labels(result=download_result(None)).inc()
            return True
        finally:
            os.close(descriptor)

    def _fetch(self, blob: BlobRef, path: Path) -> None:
        digest = blob.digest
        with self._work_dir() as work:
            compressed = work / "blob.tar.zst"
            self._blobs.download(digest, compressed)
            with self._counter:
                self.downloads += 1
            self.metrics.download_bytes.inc(compressed.stat().st_size)
            unpacked = work / digest.hex
            started = time.perf_counter()
            unpack_file(compressed, unpacked, digest, tar_size=blob.tar_size)
            self.metrics.unpack_seconds.observe(time.perf_counter() - started)
            compressed.unlink()
            size, files = seal(unpacked)
            meta = work / "meta.json"
            meta.write_text(json.dumps({"bytes": size, "files": files}))
            os.replace(meta, self._meta_file(digest))
            try:
                unpacked.rename(path)  # the commit point
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not path.is_dir():
                    raise
                return  # another process placed the same content first
            # Only now: moving a directory to another parent needs write permission on it (to update "..").
            path.chmod(0o555)

    @contextmanager
    def _work_dir(self) -> Iterator[Path]:
        """A fresh directory under tmp/, flocked while we work in it (so no cleaner takes it), removed afterwards."""
        work = self.tmp_dir / secrets.token_hex(8)
        work.mkdir(mode=0o700)
        descriptor = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield work
        finally:
            with suppress(OSError):  # whatever is left is swept by a later cleaner; the caller's error matters
                remove_tree(work)
            os.close(descriptor)

    def _forget(self, digest: Digest, descriptor: int) -> None:
        """Drop the records of an absent entry when `descriptor` (its use lock) can be made exclusive."""
        with suppress(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not self.entry(digest).is_dir():
                self.drop_records(digest)

    def drop_records(self, digest: Digest) -> None:
        """The size record, canonical tar and lock files of a digest, unlinked by the holder of its exclusive use
        lock (nobody uses or fetches the digest meanwhile)."""
        self._meta_file(digest).unlink(missing_ok=True)
        self.tar_file(digest).unlink(missing_ok=True)
        self._fetch_lock(digest).unlink(missing_ok=True)
        self.use_lock(digest).unlink(missing_ok=True)

    def link_template(self, tenant_id: str, code: str, digest: Digest) -> Path:
        """Point `templates/<tenant_id>/<code>` at the store entry of `digest` (present: link inside `use`), replacing
        any earlier link atomically. Returns the link."""
        for what, name in (("tenant id", tenant_id), ("template code", code)):
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"{what} {name!r} cannot name a directory: expected letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit, at most 255 characters"
                )
        entry = self.entry(digest)
        if not entry.is_dir():
            raise FileNotFoundError(f"{entry} is not in the store; link a template inside `use()` of its blob")
        folder = self.templates_dir / tenant_id
        folder.mkdir(exist_ok=True)
        link = folder / code
        staged = folder / f".{code}.{secrets.token_hex(6)}.tmp"
        staged.symlink_to(Path("..", "..", "store", "sha256", entry.name))
        try:
            os.replace(staged, link)
        except OSError as exc:
            staged.unlink()
            raise OSError(exc.errno, f"cannot replace {link} with a symlink to {entry}: {exc.strerror}") from exc
        return link

    def digests(self) -> list[Digest]:
        """The digests whose content is in the store."""
        return sorted(self._entries())

    def _entries(self) -> Iterator[Digest]:
        with os.scandir(self.entries_dir) as listing:
            for item in listing:
                if ENTRY_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False):
                    yield Digest(item.name)

    def stats(self) -> StoreStats:
        """Bytes of content and entries in the store, from the size recorded beside each entry."""
        sizes = [self.entry_bytes(digest) for digest in self._entries()]
        return StoreStats(bytes=sum(sizes), entries=len(sizes))

    def entry_bytes(self, digest: Digest) -> int:
        """The bytes of content of an entry, from its size record; a lost or damaged record is written again."""
        meta = self._meta_file(digest)
        try:
            return int(json.loads(meta.read_text())["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            size, files = seal(self.entry(digest))
        except FileNotFoundError:
            return 0  # removed meanwhile
        with self._work_dir() as work:  # rewrite a lost or damaged record atomically
            (work / "meta.json").write_text(json.dumps({"bytes": size, "files": files}))
            os.replace(work / "meta.json", meta)
        return size

    def _last_used(self, digest: Digest) -> int:
        for path in (self.use_lock(digest), self._meta_file(digest)):
            with suppress(FileNotFoundError):
                return path.stat().st_mtime_ns
        return 0

    def evict(self) -> list[Digest]:
        """Remove least recently used entries until the content fits `max_bytes`, skipping entries in use (which
        may leave the store over the cap). Returns the removed digests."""
        if self.max_bytes is None:
            return []
        descriptor = lock(self.root / "store" / "evict.lock")
        try:
            candidates = sorted((self._last_used(digest), digest) for digest in self._entries())
            sizes = {digest: self.entry_bytes(digest) for _, digest in candidates}
            total = sum(sizes.values())
            removed: list[Digest] = []
            for _, digest in candidates:
                if total <= self.max_bytes:
                    break
                if self._remove_unused(digest):
                    total -= sizes[digest]
                    removed.append(digest)
            return removed
        finally:
            os.close(descriptor)

    def _remove_unused(self, digest: Digest) -> bool:
        """Remove an entry unless it is in use; True when it was removed by us."""
        descriptor = try_lock(self.use_lock(digest), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if descriptor is None:
            return False
        try:
            return self.remove_locked(digest)
        finally:
            os.close(descriptor)

    def remove_locked(self, digest: Digest) -> bool:
        """Remove an entry whose use lock the caller holds exclusively: out of the store by one rename, then deleted.
        True when it was there to remove."""
        entry = self.entry(digest)
        if not entry.is_dir():
            return False
        with self._work_dir() as work:
            entry.chmod(0o755)  # moving a directory to another parent needs write permission on it
            entry.rename(work / digest.hex)
            self.drop_records(digest)
        return True

    def remove_junk(self, path: Path) -> list[str]:
        """Remove a stray file or tree of the store; its path relative to the root, or nothing when already gone."""
        with suppress(FileNotFoundError):
            remove_tree(path)
            return [str(path.relative_to(self.root))]
        return []

    def clean_tmp(self) -> list[str]:
        """Remove work under tmp/ that no live process holds (left by a process that died); the removed paths."""
        junk: list[str] = []
        with os.scandir(self.tmp_dir) as listing:
            items = list(listing)
        for item in items:
            path = Path(item.path)
            try:
                if time.time() - item.stat(follow_symlinks=False).st_mtime < self.tmp_grace:
                    continue
                descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:  # a symlink (ELOOP) or unreadable: nobody works in it
                junk += self.remove_junk(path)
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                junk += self.remove_junk(path)
            except BlockingIOError:
                continue  # in progress
            finally:
                os.close(descriptor)
        return junk
