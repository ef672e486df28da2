"""The worker's local store (DESIGN §4): blobs fetched by digest, verified, unpacked read-only and cached under a root.

Layout under the root, which several worker processes on one host may share:

    store/sha256/<hex>/          unpacked content of one digest, read-only; appears only by one `rename`
    store/meta/<hex>.json        its size: {"bytes": sum of file sizes, "files": regular files}
    store/locks/<hex>.lock       held shared (flock) while the entry is in use; its mtime is the entry's last use
    store/locks/<hex>.fetch      held exclusively by the one process or thread fetching the digest
    store/evict.lock             one eviction at a time on the host
    templates/<tenant>/<code>    symlink to the store entry of the template's latest digest used here
    runs/                        private working copies of running tasks (the runner's)
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
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from storage.blobstore import BlobStore
from storage.canonical import Limits
from storage.digest import Digest
from storage.errors import SnapshotRefused
from storage.snapshot import snapshot_directory
from storage.unpack import DEFAULT_LIMITS, unpack_file
from worker.metrics import WorkerMetrics, download_result
from worker.protocol import BlobRef

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_VERIFY_LIMITS = Limits(max_bytes=DEFAULT_LIMITS.max_tar_bytes, max_files=DEFAULT_LIMITS.max_files)
TMP_GRACE = 60.0
"""Seconds before an unlocked item under tmp/ counts as left over (it covers the instant between mkdir and flock)."""


@dataclass(frozen=True)
class StoreStats:
    """How much the store holds: bytes of file content, and entries."""

    bytes: int
    entries: int


@dataclass(frozen=True)
class VerifyReport:
    """What `LocalStore.verify` found: digests whose content packs back to them (`ok`), digests whose content does
    not and was removed (`removed`), such digests kept because they were in use (`in_use`, removed by a later
    verify), and stray paths (relative to the root) that were removed (`junk`)."""

    ok: list[str]
    removed: list[str]
    in_use: list[str]
    junk: list[str]

    @property
    def problems(self) -> bool:
        """Whether some entry's content did not match its digest (stray files are only housekeeping)."""
        return bool(self.removed or self.in_use)


def _digest(text: str) -> Digest:
    """`sha256:<hex>` or the bare 64 hex; anything else raises InvalidDigest saying what is expected."""
    return Digest.parse(text) if text.startswith("sha256:") else Digest(text)


def _try_lock(path: Path, operation: int) -> int | None:
    """A descriptor holding `operation` (flock) on the lock file `path`, created if missing; None when LOCK_NB was
    asked and another holder refuses it. A lock file is only unlinked by the holder of its exclusive lock, so the
    lock is retaken when the file we locked is no longer the one at `path`."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, operation)
            held, current = os.fstat(descriptor), os.stat(path)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except FileNotFoundError:
            os.close(descriptor)
            continue
        except BaseException:
            os.close(descriptor)
            raise
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            return descriptor
        os.close(descriptor)


def _lock(path: Path, *, shared: bool = False) -> int:
    """A descriptor holding a shared or exclusive flock on the lock file `path`, waiting for it as long as it takes."""
    descriptor = _try_lock(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    if descriptor is None:  # only a LOCK_NB request is ever refused
        raise RuntimeError(f"a blocking lock of {path} was refused")
    return descriptor


def _touch(descriptor: int) -> None:
    """Record a use now; explicit nanoseconds, because the kernel's own file times are coarse (jiffies)."""
    now = time.time_ns()
    os.utime(descriptor, ns=(now, now))


def _seal(root: Path) -> tuple[int, int]:
    """Remove the write bits of every file and directory below `root`; return (bytes of regular files, files)."""
    total = files = 0
    pending = [os.fspath(root)]
    while pending:
        with os.scandir(pending.pop()) as listing:
            for item in listing:
                if item.is_symlink():
                    continue  # a symlink's own mode means nothing on Linux
                info = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(item.path)
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    files += 1
                os.chmod(item.path, stat.S_IMODE(info.st_mode) & ~0o222)
    return total, files


def _remove_tree(path: Path) -> None:
    """Remove a file or a (read-only) tree: directories get their owner bits back first, as we may not be root."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    pending = [os.fspath(path)]
    while pending:
        directory = pending.pop()
        os.chmod(directory, stat.S_IMODE(os.lstat(directory).st_mode) | 0o700)
        with os.scandir(directory) as listing:
            pending += [item.path for item in listing if item.is_dir(follow_symlinks=False)]
    shutil.rmtree(path)


class LocalStore:
    """The store under `root`, filled from `blobs`, capped at `max_bytes` of content when given. Thread-safe.
    Counts its hits, misses and downloads into `metrics` (a registry nobody serves when not given)."""

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
        self._meta = root / "store" / "meta"
        self._locks = root / "store" / "locks"
        self.templates_dir = root / "templates"
        self.runs_dir = root / "runs"
        self.tmp_dir = root / "tmp"
        for directory in (self.entries_dir, self._meta, self._locks, self.templates_dir, self.runs_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.runs_dir.chmod(0o711)  # run-as users may enter their own run directory, never list the others
        self._clean_tmp()

    def entry(self, digest: str) -> Path:
        """Where the content of `digest` lives (present or not)."""
        return self.entries_dir / _digest(digest).hex

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
        digest = _digest(blob.digest)
        use_lock = self._locks / f"{digest.hex}.lock"
        descriptor = _lock(use_lock, shared=True)
        path = self.entries_dir / digest.hex
        try:
            _touch(descriptor)
            downloaded = False
            if not path.is_dir():
                downloaded = self._fetch_once(digest, blob, path)
                if downloaded and self.max_bytes is not None:
                    self.evict()
            yield path, downloaded
            _touch(descriptor)
        finally:
            if not path.is_dir():  # the fetch failed: leave no lock files behind if nobody else waits on them
                self._forget(digest.hex, descriptor)
            os.close(descriptor)

    def _fetch_once(self, digest: Digest, blob: BlobRef, path: Path) -> bool:
        descriptor = _lock(self._locks / f"{digest.hex}.fetch")
        try:
            if path.is_dir():  # fetched by another thread or process while we waited
                return False
            try:
                self._fetch(digest, blob, path)
            except Exception as exc:
                self.metrics.downloads.labels(result=download_result(exc)).inc()
                raise
            self.metrics.downloads.labels(result=download_result(None)).inc()
            return True
        finally:
            os.close(descriptor)

    def _fetch(self, digest: Digest, blob: BlobRef, path: Path) -> None:
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
            size, files = _seal(unpacked)
            meta = work / "meta.json"
            meta.write_text(json.dumps({"bytes": size, "files": files}))
            os.replace(meta, self._meta / f"{digest.hex}.json")
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
                _remove_tree(work)
            os.close(descriptor)

    def _forget(self, hex_digest: str, descriptor: int) -> None:
        """Drop the records of an absent entry when `descriptor` (its use lock) can be made exclusive."""
        with suppress(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not (self.entries_dir / hex_digest).is_dir():
                self._drop_records(hex_digest)

    def _drop_records(self, hex_digest: str) -> None:
        """The size record and lock files of a digest, unlinked by the holder of its exclusive use lock (nobody
        uses or fetches the digest meanwhile)."""
        (self._meta / f"{hex_digest}.json").unlink(missing_ok=True)
        (self._locks / f"{hex_digest}.fetch").unlink(missing_ok=True)
        (self._locks / f"{hex_digest}.lock").unlink(missing_ok=True)

    def link_template(self, tenant_id: str, code: str, digest: str) -> Path:
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

    def digests(self) -> list[str]:
        """The digests (64 hex) whose content is in the store."""
        return sorted(item.name for item in self._entries())

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self.entries_dir) as listing:
            yield from (item for item in listing if _HEX64.fullmatch(item.name) and item.is_dir(follow_symlinks=False))

    def stats(self) -> StoreStats:
        """Bytes of content and entries in the store, from the size recorded beside each entry."""
        sizes = [self._size(item.name) for item in self._entries()]
        return StoreStats(bytes=sum(sizes), entries=len(sizes))

    def _size(self, hex_digest: str) -> int:
        meta = self._meta / f"{hex_digest}.json"
        try:
            return int(json.loads(meta.read_text())["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        entry = self.entries_dir / hex_digest
        try:
            size, files = _seal(entry)
        except FileNotFoundError:
            return 0  # removed meanwhile
        with self._work_dir() as work:  # rewrite a lost or damaged record atomically
            (work / "meta.json").write_text(json.dumps({"bytes": size, "files": files}))
            os.replace(work / "meta.json", meta)
        return size

    def _last_used(self, hex_digest: str) -> int:
        for path in (self._locks / f"{hex_digest}.lock", self._meta / f"{hex_digest}.json"):
            with suppress(FileNotFoundError):
                return path.stat().st_mtime_ns
        return 0

    def evict(self) -> list[str]:
        """Remove least recently used entries until the content fits `max_bytes`, skipping entries in use (which
        may leave the store over the cap). Returns the removed digests (64 hex)."""
        if self.max_bytes is None:
            return []
        descriptor = _lock(self.root / "store" / "evict.lock")
        try:
            candidates = sorted((self._last_used(item.name), item.name) for item in self._entries())
            sizes = {hex_digest: self._size(hex_digest) for _, hex_digest in candidates}
            total = sum(sizes.values())
            removed: list[str] = []
            for _, hex_digest in candidates:
                if total <= self.max_bytes:
                    break
                if self._remove_unused(hex_digest):
                    total -= sizes[hex_digest]
                    removed.append(hex_digest)
            return removed
        finally:
            os.close(descriptor)

    def _remove_unused(self, hex_digest: str) -> bool:
        """Remove an entry unless it is in use; True when it was removed by us."""
        descriptor = _try_lock(self._locks / f"{hex_digest}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if descriptor is None:
            return False
        try:
            return self._remove_locked(hex_digest)
        finally:
            os.close(descriptor)

    def _remove_locked(self, hex_digest: str) -> bool:
        """Remove an entry whose use lock we hold exclusively: out of the store by one rename, then deleted."""
        entry = self.entries_dir / hex_digest
        if not entry.is_dir():
            return False
        with self._work_dir() as work:
            entry.chmod(0o755)  # moving a directory to another parent needs write permission on it
            entry.rename(work / hex_digest)
            self._drop_records(hex_digest)
        return True

    def verify(self) -> VerifyReport:
        """Re-pack every entry (hashing only) and remove those whose digest no longer matches, plus stray files
        in the store and left-over work under tmp/. Entries in use are checked but only removed when unused."""
        ok: list[str] = []
        removed: list[str] = []
        in_use: list[str] = []
        junk: list[str] = []
        with os.scandir(self.entries_dir) as listing:
            names = sorted(item.name for item in listing)
        for name in names:
            path = self.entries_dir / name
            if not _HEX64.fullmatch(name) or path.is_symlink() or not path.is_dir():
                junk += self._remove_junk(path)
                continue
            descriptor = _lock(self._locks / f"{name}.lock", shared=True)
            try:
                if not path.is_dir():
                    continue  # evicted while we waited
                if self._packs_to(path, name):
                    ok.append(name)
                    path.chmod(0o555)
                    self._size(name)  # rewrites a lost size record
                    continue
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    in_use.append(name)
                    continue
                if self._remove_locked(name):
                    removed.append(name)
            finally:
                os.close(descriptor)
        junk += self._sweep_records()
        junk += self._clean_tmp()
        return VerifyReport(ok=ok, removed=removed, in_use=in_use, junk=junk)

    @staticmethod
    def _packs_to(path: Path, hex_digest: str) -> bool:
        try:
            return snapshot_directory(path, None, limits=_VERIFY_LIMITS).digest.hex == hex_digest
        except SnapshotRefused:  # a tree no canonical tar holds (a fifo, an escaping symlink, …): not the content
            return False

    def _remove_junk(self, path: Path) -> list[str]:
        with suppress(FileNotFoundError):
            _remove_tree(path)
            return [str(path.relative_to(self.root))]
        return []

    def _sweep_records(self) -> list[str]:
        """Size records and lock files of digests that have no entry (and that nobody is fetching), and strays."""
        junk: list[str] = []
        for folder, suffixes in ((self._meta, (".json",)), (self._locks, (".lock", ".fetch"))):
            with os.scandir(folder) as listing:
                names = sorted(item.name for item in listing)
            for name in names:
                stem, dot, suffix = name.rpartition(".")
                if not (_HEX64.fullmatch(stem) and f"{dot}{suffix}" in suffixes):
                    junk += self._remove_junk(folder / name)
                elif not (self.entries_dir / stem).is_dir() and self._forget_absent(stem):
                    junk.append(str((folder / name).relative_to(self.root)))
        return junk

    def _forget_absent(self, hex_digest: str) -> bool:
        """Drop the records of an absent entry unless it is in use (being fetched); True when dropped."""
        descriptor = _try_lock(self._locks / f"{hex_digest}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if descriptor is None:
            return False
        try:
            if (self.entries_dir / hex_digest).is_dir():
                return False
            self._drop_records(hex_digest)
            return True
        finally:
            os.close(descriptor)

    def _clean_tmp(self) -> list[str]:
        """Remove work under tmp/ that no live process holds (left by a process that died)."""
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
                junk += self._remove_junk(path)
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                junk += self._remove_junk(path)
            except BlockingIOError:
                continue  # in progress
            finally:
                os.close(descriptor)
        return junk
