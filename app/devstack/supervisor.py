"""Keeping `ahop dev`'s API and worker up: a child that exits unexpectedly is started again, with backoff.

A local stack should survive what a production deployment survives under a service manager: a worker killed by
the OOM killer or a crashed API comes back on its own. Each restart is said on stdout and in the child's own log.
The delay starts at `FIRST_DELAY` and doubles up to `MAX_DELAY` while a child keeps exiting; a child that ran for
`STEADY_SECONDS` before it exited starts over at the first delay.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from app.devstack.errors import StackError
from app.devstack.processes import ManagedProcess

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STEADY_SECONDS = 60.0


@dataclass
class _Watched:
    process: ManagedProcess
    delay: float = FIRST_DELAY
    started: float = field(default_factory=time.monotonic)
    restart_at: float | None = None

    def backoff(self, now: float) -> float:
        """Schedule the next start; return its delay."""
        delay = self.delay
        self.restart_at = now + delay
        self.delay = min(self.delay * 2, MAX_DELAY)
        return delay


def describe_exit(returncode: int | None) -> str:
    """How a process ended, as an operator reads it: a signal's name rather than a negative code."""
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """Restarts the processes it watches when they exit; `check` does one round and never blocks."""

    def __init__(self, processes: Sequence[ManagedProcess], out: TextIO) -> None:
        self._watched = [_Watched(process) for process in processes]
        self._out = out

    def check(self) -> None:
        """Notice children that exited and start those whose delay has passed."""
        now = time.monotonic()
        for watched in self._watched:
            process = watched.process
            if watched.restart_at is None:
                if process.running():
                    continue
                if now - watched.started >= STEADY_SECONDS:
                    watched.delay = FIRST_DELAY
                how = describe_exit(process.popen.returncode)
                delay = watched.backoff(now)
                self._say(process, f"{process.name} {how}; restarting it in {delay:g} s (its log: {process.log_path})")
            elif now >= watched.restart_at:
                try:
                    process.respawn()
                except StackError as exc:
                    delay = watched.backoff(now)
                    self._say(process, f"{process.name} could not be restarted: {exc}; trying again in {delay:g} s")
                    continue
                watched.started, watched.restart_at = now, None
                self._say(process, f"{process.name} restarted (pid {process.pid})")

    def _say(self, process: ManagedProcess, message: str) -> None:
        self._out.write(message + "\n")
        self._out.flush()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with open(process.log_path, "a") as log:
                log.write(f"{stamp} ahop dev: {message}\n")
        except OSError:
            pass  # the message is on stdout; a log we cannot write must not stop the stack
