"""Child processes we own: started with a pid file, stopped by that pid only, stale leftovers detected.

Every child dies with the process that started it, however that one dies (`app.devstack.parent_death`). A pid
file records the pid *and* the process start time, so a leftover that an older launcher left running is
recognised (and stopped) while an unrelated process that happens to reuse the pid is never touched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.devstack.errors import StackError
from app.devstack.parent_death import in_forker
from app.parent_death import die_with_parent

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PICKER = random.SystemRandom()
"""The operating system's randomness: no seed a test library sets on `random` makes two processes pick alike."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago, below the kernel's ephemeral range.

    A port from `bind(0)` comes from the ephemeral range, the one every outgoing connection takes its local port
    from and every other `bind(0)` draws on: in the seconds before a server binds the port it was given (SeaweedFS
    binds its eight one after another; the API waits for the servers before it), a busy machine's traffic can take
    it, and the server fails with "address already in use". Below that range only a server told to use a port
    binds it.
    """
    low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 32768
    if low <= 2048:  # an ephemeral range tuned to start near 1024 leaves no room below it: take what bind(0) gives
        return _kernel_ports(count)
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(100 * count):
            port = _PICKER.randrange(max(1024, low // 2), low)
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)  # held until all are chosen, so they are distinct
            if len(ports) == count:
                return ports
    raise StackError(f"no {count} free TCP ports found on 127.0.0.1 below {low}")


def _kernel_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def find_program(name: str, candidates: Iterable[Path], missing: str) -> Path:
    """The first of `candidates` that exists, else `name` on PATH; when neither is there, a StackError saying
    `missing` (which should say how to install the program or where to point instead)."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise StackError(missing)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def stop_pid(pid: int, *, stop_signal: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send `stop_signal` to one process, wait up to `timeout`, then SIGKILL it."""
    try:
        process = psutil.Process(pid)
        os.kill(pid, stop_signal)
        process.wait(timeout)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return


def clear_stale(pid_file: Path, stop_signal: signal.Signals = signal.SIGTERM) -> int | None:
    """Stop the process a leftover pid file names if it is still the same process; remove the file.

    Returns the pid that was stopped, or None when nothing of ours was running.
    """
    try:
        record = json.loads(pid_file.read_text())
        pid, started = int(record["pid"]), float(record["started"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        pid_file.unlink(missing_ok=True)  # unreadable: nothing in it can be trusted
        return None
    actual = _start_time(pid)
    stopped = None
    if actual is not None and abs(actual - started) < 0.5:
        stop_pid(pid, stop_signal=stop_signal)
        stopped = pid
    pid_file.unlink(missing_ok=True)
    return stopped


def _spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    pid_file: Path,
    env: Mapping[str, str] | None,
    user: str | None,
    stop_signal: signal.Signals,
    cwd: Path | None,
) -> subprocess.Popen[bytes]:
    clear_stale(pid_file, stop_signal)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)

    def start() -> subprocess.Popen[bytes]:
        # In the forker thread: the child dies with us, and its pid file is written even if we are interrupted.
        with open(log_path, "ab") as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    user=user,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=die_with_parent(stop_signal),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise StackError(f"{name}: could not start {argv[0]}: {exc}") from exc
        started = _start_time(popen.pid) or time.time()
        pid_file.write_text(json.dumps({"pid": popen.pid, "started": started, "argv0": str(argv[0])}))
        return popen

    return in_forker(start)


@dataclass
class ManagedProcess:
    """A server process we started, its log and pid file, and how to start it again."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    pid_file: Path
    stop_signal: signal.Signals = signal.SIGTERM
    argv: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    user: str | None = None
    cwd: Path | None = None

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        pid_file: Path,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start `argv` in its own session (a terminal's Ctrl-C reaches us, and we stop it in order); it gets
        `stop_signal` when we die."""
        popen = _spawn(name, argv, log_path, pid_file, env, user, stop_signal, cwd)
        kept_env = dict(env) if env is not None else None
        return cls(name, popen, log_path, pid_file, stop_signal, tuple(argv), kept_env, user, cwd)

    def respawn(self) -> None:
        """Start the same command again, with the same environment, log and pid file (this one has exited)."""
        if self.running():
            raise StackError(f"{self.name} is still running (pid {self.pid})")
        self.popen = _spawn(
            self.name, self.argv, self.log_path, self.pid_file, self.env, self.user, self.stop_signal, self.cwd
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, probe: Callable[[], bool], *, where: str, timeout: float = 60.0) -> None:
        """Poll `probe` until it answers True; fail fast if the process dies, with its log's tail."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not self.running():
                raise StackError(
                    f"{self.name} exited with code {self.popen.returncode} before it was ready ({where}); "
                    f"its log is {self.log_path}:\n{tail(self.log_path)}"
                )
            if probe():
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} did not become ready within {timeout:g}s ({where}); "
                    f"its log is {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this process (and only it), then forget its pid file."""
        if self.running():
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.pid_file.unlink(missing_ok=True)
