"""A task's run directory and the user its script runs as: the private copy, the parameters file, their removal.

The copy lives at `runs_dir/<task_id>`, the parameters file beside it (mode 0600); with a run-as user (the worker
must be root) that user owns both. Whatever happened, both are removed when the task ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ahop.worker")


class NotRunnable(Exception):
    """The request cannot run; the message becomes the task's error."""


@dataclass(frozen=True)
class RunAsUser:
    """Another user than the worker's own, whom the script runs as."""

    name: str
    uid: int
    gid: int
    home: Path | None
    """None when the user's home directory does not exist on this worker."""


def user_name(uid: int) -> str:
    """The login name of `uid`, or the number itself when it has no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry, as in some containers
        return str(uid)


def run_as_user(name: str | None) -> RunAsUser | None:
    """The user to switch to, or None when the script runs as the worker's own user."""
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotRunnable(f"run-as user {name!r} does not exist on this worker") from None
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise NotRunnable(
            f"this worker runs as uid {os.geteuid()}, not root, so it cannot run scripts as {name!r}; "
            "run the worker as root or remove its run-as user"
        )
    home = Path(entry.pw_dir)
    return RunAsUser(name, entry.pw_uid, entry.pw_gid, home if home.is_dir() else None)


def check_reachable(directory: Path, user: RunAsUser) -> None:
    """Refuse clearly when the run-as user could not enter its run directory (it keeps only its primary group)."""
    for path in (directory, *directory.parents):
        info = path.stat()
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise NotRunnable(
                f"run-as user {user.name!r} cannot enter {path} (mode {stat.S_IMODE(info.st_mode):o}); the runs "
                f"directory and every directory above it must be searchable by that user, e.g. chmod o+x {path}"
            )


def prepare_run_copy(
    source: Path, run_dir: Path, params_file: Path, params: Mapping[str, Any], user: RunAsUser | None
) -> None:
    """Make the run copy and the parameters file, owned by the run-as user when there is one."""
    owner = (user.uid, user.gid) if user is not None else None
    remove_run_copy(run_dir, params_file, user)  # left by a worker that died during an earlier attempt of this task
    try:
        copy_tree(source, run_dir, owner)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(params_file, flags, 0o600), "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(json.dumps(dict(params), ensure_ascii=False).encode())
    except OSError as exc:
        raise NotRunnable(f"could not prepare the run directory {run_dir}: {exc}") from exc


def copy_tree(source: Path, dest: Path, owner: tuple[int, int] | None) -> None:
    """Copy files with their modes plus owner write, symlinks as symlinks; the top directory private (0700).

    Directories go to the run-as user bottom-up: each stays the worker's while its entries are changed, so no other
    process of that user can swap an entry for a symlink and have the worker chown or chmod the link's target.
    """

    def copy_file(src: str, dst: str) -> str:
        shutil.copyfile(src, dst, follow_symlinks=False)
        os.chmod(dst, stat.S_IMODE(os.stat(src).st_mode) | stat.S_IWUSR)
        if owner is not None:
            os.chown(dst, *owner)
        return dst

    shutil.copytree(source, dest, symlinks=True, copy_function=copy_file)
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                if owner is not None:
                    os.lchown(path, *owner)
            elif name in dirs:  # copytree gave it the store's read-only mode
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
                if owner is not None:
                    os.chown(path, *owner)
    os.chmod(dest, 0o700)
    if owner is not None:
        os.chown(dest, *owner)


def remove_run_copy(run_dir: Path, params_file: Path, user: RunAsUser | None) -> None:
    """Remove the run copy and the parameters file; a failure is logged, never raised."""
    try:
        _remove_tree(run_dir, repair=user is None)
        with contextlib.suppress(FileNotFoundError):
            params_file.unlink()
    except OSError as exc:
        log.warning("could not remove the run directory %s: %s", run_dir, exc)


def _remove_tree(path: Path, repair: bool) -> None:
    """Remove a run copy; with `repair`, also one whose script (the worker's own user) took away its permissions.

    Never repair for a run-as user: root needs no permissions to remove, and chmod would follow that user's links.
    """
    try:
        shutil.rmtree(path)  # resistant to symlink swaps (works on directory descriptors)
    except FileNotFoundError:
        return
    except OSError:
        if not repair:
            raise
        os.chmod(path, stat.S_IRWXU)
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                if not os.path.islink(sub := os.path.join(root, name)):
                    os.chmod(sub, stat.S_IRWXU)
        shutil.rmtree(path)
