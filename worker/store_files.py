"""Files of the worker's local store: flock locks that stay valid while their files come and go, and read-only trees.

A lock file is only ever unlinked by the holder of its exclusive lock, so whoever locks a file that was unlinked
meanwhile takes the lock again on the file now at that path (`try_lock`). Entries are sealed read-only (`seal`) and
need their owner bits back before they can be removed by a process that is not root (`remove_tree`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import time
from pathlib import Path


def try_lock(path: Path, operation: int) -> int | None:
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


def lock(path: Path, *, shared: bool = False) -> int:
    """A descriptor holding a shared or exclusive flock on the lock file `path`, waiting for it as long as it takes."""
    descriptor = try_lock(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    if descriptor is None:  # only a LOCK_NB request is ever refused
        raise RuntimeError(f"a blocking lock of {path} was refused")
    return descriptor


def touch(descriptor: int) -> None:
    """Record a use now; explicit nanoseconds, because the kernel's own file times are coarse (jiffies)."""
    now = time.time_ns()
    os.utime(descriptor, ns=(now, now))


def seal(root: Path) -> tuple[int, int]:
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


def remove_tree(path: Path) -> None:
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
