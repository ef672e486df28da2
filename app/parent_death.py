"""A child process that the kernel stops when its parent dies, however the parent dies (SIGKILL included).

`die_with_parent(signal)` is a `preexec_fn` for `subprocess.Popen`: between fork and exec the child asks for
`PR_SET_PDEATHSIG`, then checks that its parent is still the process that started it (one that died in between
would never send the signal) and refuses to start if not. The setting survives `exec` but is cleared by a change of
user, so it is made after the child has taken its user (subprocess calls `preexec_fn` after `setreuid`). It makes
two system calls through a ctypes function looked up at import, before any fork, and takes no lock: safe in a
process with threads. The kernel sends the signal when the *thread* that forked the child ends, so fork from a
thread that lives as long as the process does (`app.devstack.parent_death.in_forker`, the git pool's threads).
Used by `ahop dev` for its servers and by the API for its git commands; the worker's supervisor has its own
(it runs as a standard-library-only script that imports nothing of ours).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import cast

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""


def _libc_prctl() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]  # the kernel reads unsigned longs after the option
    prctl.restype = ctypes.c_int
    return cast(Callable[..., int], prctl)


_PRCTL = _libc_prctl()


class _DieWithParent:
    """The `preexec_fn` of a child: ask for `death_signal` when the parent dies; refuse if it already has."""

    def __init__(self, death_signal: signal.Signals) -> None:
        self.death_signal = int(death_signal)
        self.parent = os.getpid()

    def __call__(self) -> None:
        assert _PRCTL is not None
        if _PRCTL(PR_SET_PDEATHSIG, self.death_signal, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != self.parent:
            raise ChildProcessError("the parent died before this child could start")


def die_with_parent(death_signal: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` that ties the child's life to ours (None where Linux's prctl is absent).

    Call it in the thread that forks: the signal belongs to that thread."""
    return _DieWithParent(death_signal) if _PRCTL is not None else None
