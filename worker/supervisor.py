"""The per-attempt supervisor: a script and everything it starts die with the worker that runs it.

The worker never executes a script directly. It starts this file as its own program (`python -I -S supervisor.py
WORKER_PID UID GID -- ARGV...`, standard library only, so it loads nothing of the worker or its environment), as
the leader of a new session and process group; the supervisor forks the script into that group and then:

- asks the kernel for `PR_SET_PDEATHSIG`: it gets `WORKER_DIED` the moment the worker dies, however it dies
  (SIGKILL, OOM killer, a crash). The signal is tied to the thread that forked the supervisor, which is the
  worker's event-loop thread, alive as long as the worker is;
- is a child subreaper (`PR_SET_CHILD_SUBREAPER`): whatever the script starts and leaves behind, even a process
  that `setsid`s into a session of its own, is reparented to the supervisor, never to PID 1, so it can be found;
- when the worker dies: kills every descendant and exits. When the script exits: kills whatever the script left
  behind the same way, then exits with the script's own status (the same exit code, or the same signal), so the
  worker sees the script's outcome exactly as if it had run the script itself. When the worker sends `STOP_ALL`
  (its SIGKILL on a timeout, a cancel or its own shutdown): kills every descendant, the script included, and ends
  as the script did (SIGKILL). SIGKILL to the group alone would end the supervisor with the group and leave what
  left the group running.

Killing "every descendant" means: SIGKILL each of the supervisor's own children, wait for one, look again, until it
has no child left. A killed process's children become the supervisor's children (it is their subreaper), so each
round reaches one level deeper, and a process killed with SIGKILL cannot fork any more. Only own children are
signalled: their pids cannot be taken by another process before the supervisor reaps them.

Why this and not the alternatives: a parent-death signal on the script itself is lost when the script execs a
set-user-ID program, is not inherited by the script's children, and misses everything that leaves the group; a
cgroup per attempt needs a writable, delegated cgroup v2 hierarchy (root or systemd), which workers in containers
often do not have. The supervisor needs neither privileges nor kernel features beyond two `prctl` calls.

The race of a worker that dies before `PR_SET_PDEATHSIG` is set is closed by checking the parent's pid after
setting it: when it is no longer the worker, nothing is started. The supervisor runs as the worker's user; with a
run-as user it stays root and only the script changes user (after the fork, before the exec), so a script cannot
signal its supervisor away. Signals the worker sends to the whole group (SIGTERM on a timeout or a cancel) reach
the script and are ignored by the supervisor; SIGKILL ends both, as it ended the script before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
"""From <linux/prctl.h>."""
WORKER_DIED = signal.SIGUSR1
"""The parent-death signal: the worker itself never sends it."""
STOP_ALL = signal.SIGUSR2
"""From the worker: kill the script and everything it started now."""
NOT_STARTED = 125
"""Exit status when the worker died before the script could be started (nobody is left to read it)."""
_WATCHED = {WORKER_DIED, STOP_ALL, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
"""Blocked and taken with `sigwait`: SIGTERM, SIGINT and SIGHUP are meant for the script, not for the supervisor."""


def main(argv: list[str]) -> int:
    """Run `argv` = `[WORKER_PID, UID, GID, "--", PROGRAM, ARGS...]` (UID and GID `-` to keep the worker's)."""
    worker_pid, uid, gid, separator, *command = argv
    if separator != "--" or not command:
        print("usage: supervisor.py WORKER_PID UID GID -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
    _prctl(libc, PR_SET_PDEATHSIG, WORKER_DIED)
    if os.getppid() != int(worker_pid):  # the worker died before the signal was set up: it will never come
        return NOT_STARTED
    script = os.fork()
    if script == 0:
        _exec_script(command, None if uid == "-" else int(uid), None if gid == "-" else int(gid))
    while True:
        received = signal.sigwait(_WATCHED)
        if received == WORKER_DIED and os.getppid() != int(worker_pid):
            _kill_descendants(script)
            return NOT_STARTED
        if received == STOP_ALL:
            return _relay(_kill_descendants(script))
        if received == signal.SIGCHLD and (status := _reap(script)) is not None:
            _kill_descendants(script)
            return _relay(status)


def _exec_script(command: list[str], uid: int | None, gid: int | None) -> None:
    """In the forked child: give the script a clean signal state and its user, then become the script."""
    try:
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; a script expects the defaults
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        os.execv(command[0], command)  # noqa: S606 - an argument vector, never a shell command line
    except OSError as exc:
        os.write(2, f"the script could not be started: {exc}\n".encode())
    os._exit(127)


def _reap(script: int) -> int | None:
    """Reap every child that has exited; the script's wait status when the script was one of them."""
    status: int | None = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == script:
            status = wait_status


def _kill_descendants(script: int) -> int:
    """SIGKILL every descendant; returns once none is left (see the module docstring).

    Returns the script's wait status when it was reaped here, else one saying SIGKILL (it had been reaped before).
    """
    status = signal.SIGKILL.value  # a wait status: killed by SIGKILL
    while True:
        for child in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        if pid == script:
            status = wait_status


def _children() -> list[int]:
    """The pids whose parent is this process, read from /proc."""
    me = os.getpid()
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after the command name, which may hold spaces
        if len(fields) > 1 and int(fields[1]) == me:
            children.append(int(entry))
    return children


def _relay(status: int) -> int:
    """End the way the script ended: its exit code, or the signal that killed it."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the script's core dump, if any, is its own
        if signum != signal.SIGKILL:  # the one signal whose action cannot be set
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def _prctl(libc: ctypes.CDLL, option: int, value: int) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}, {value}) failed: {os.strerror(error)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
