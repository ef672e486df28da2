"""Keeps a worker's own credentials (S3, Redis) out of reach of the scripts it runs (DESIGN §4).

Scripts never inherit the worker's environment (`worker.runner` builds theirs from scratch), but a process of the
same user can read `/proc/<worker pid>/environ` and `mem` unless the worker is non-dumpable. A root script can read
anything on its host, so a root worker should run its scripts as a configured run-as user.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_DUMPABLE = 4
"""From <linux/prctl.h>."""


def make_non_dumpable() -> None:
    """Make this process non-dumpable, so other processes without CAP_SYS_PTRACE cannot read its memory.

    The kernel then hands this process's `/proc/<pid>/` files to root, so a script running as the worker's own user
    can no longer read the worker's environment or memory there. Children get the flag back when they exec a
    program, so the scripts themselves are unaffected. Does nothing outside Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(error)}")


def root_without_run_as_warning(run_as: str | None, *, euid: int | None = None) -> str | None:
    """The warning a worker logs at start when it runs as root with no run-as user; None when all is well."""
    if run_as is not None or (os.geteuid() if euid is None else euid) != 0:
        return None
    return (
        "this worker runs as root and has no run-as user: its scripts run as root and can read its S3 and Redis "
        "credentials; set a run-as user (AHOP_WORKER_RUN_AS) or give tenants that must not share credentials "
        "their own worker pool"
    )
