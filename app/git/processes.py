"""The server's git child processes: each dies with the server, and all are killed when the server shuts down.

Every git command runs as the leader of a process group of its own (so the helpers it starts, `upload-pack`,
`index-pack`, `ssh`, are killed with it) and asks the kernel for `PR_SET_PDEATHSIG` = SIGKILL before it execs:
however the server dies (SIGKILL, the OOM killer, a crash) the kernel kills its git children; their helpers then
see their pipes close and exit. The signal is tied to the thread that started the child, which is a thread of the
git pool (`app.git.pool`), alive until the server shuts down, and the shutdown kills every child first (`kill_all`).

The request and its race (a server that dies before the child set its signal) are `app.parent_death`'s.

GitPython reads mirrors through `git cat-file` processes of its own, which live as long as their `git.Repo`. Every
`git.Repo` of the server is opened in a `with` block on the git thread that reads it, so those processes end there,
with the work. A `git.Repo` merely dropped sits in a reference cycle: the garbage collector ends its processes later,
on whichever thread it happens to run, the event loop's included, where GitPython's wait for a hung one blocked every
request and the shutdown. Those still running at shutdown are killed by `app.serve`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from dataclasses import dataclass

from app.parent_death import die_with_parent


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


class ShuttingDown(Exception):
    """The server is shutting down: no new git command starts."""


class GitTimedOut(Exception):
    """The command did not finish within its time limit; it was killed."""


class GitProcesses:
    """Starts git commands as children that cannot outlive the server, and kills those running on shutdown."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen[str]] = set()
        self._guard = threading.Lock()
        self._closed = False

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> Finished:
        """Run `args` to its end (blocking: call it from a git pool thread); on `timeout` kill it and its group."""
        with self._guard:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
            self._running.add(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            raise GitTimedOut(f"git did not finish within {timeout:g}s") from None
        finally:
            with self._guard:
                self._running.discard(process)
            if process.returncode is None:  # interrupted otherwise: never leave it running
                _kill_group(process)
                process.wait()
        if self._closed and process.returncode < 0:
            raise ShuttingDown("the server is shutting down; git was stopped")
        return Finished(process.returncode, stdout, stderr)

    def kill_all(self) -> list[int]:
        """Refuse new commands and SIGKILL every running one with its group; answer their pids."""
        with self._guard:
            self._closed = True
            running = list(self._running)
        for process in running:
            _kill_group(process)
        return [process.pid for process in running]


def _kill_group(process: subprocess.Popen[str]) -> None:
    # While its Popen has not reaped the leader, its pid (the group's id) cannot have been taken by another process.
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
