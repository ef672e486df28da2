"""Runs a template's entry on a managed host over an SSH connection, and stops everything it started.

One run, on one connection (the caller's, already authenticated and pinned to the host's keys):
1. an exec channel makes a private directory (mode 0700) on the host and writes the environment into a file in
   it (mode 0600) from the channel's stdin; one more channel per file of `RemoteCommand.files` writes that file
   into `$AHOP_FILES_DIR` the same way. Secrets thus never pass through a command line on either side;
2. the run's channel starts the wrapper (`targets.remote_scripts`), through `sudo -n`, or `sudo -S -p ''` with the
   become password written to its stdin, when the command asks for sudo. The wrapper reads the environment and
   deletes its file, starts the entry as a session of its own and relays its exit status. The first line of the
   run's stdout is the wrapper's mark with the session id: before it, the entry has not started and what the
   host says (sudo asking for a password, a missing working directory) is why; after it, lines are the entry's;
3. on a timeout or a cancel, a second exec channel on the same connection (through sudo when the run is under
   sudo) sends SIGTERM to every process group of the session, waits up to `kill_grace` seconds for the session to
   be empty, then SIGKILLs what is left until the host reports none; what is still alive after that is named in
   the ending's error;
4. the private directory is removed (by the wrapper when it ends, and once more from here).
If the connection dies, the ending is `unreachable`: no wait outlives the connection, and on the host the wrapper,
whose stdin the connection held open, stops the session by itself once its sshd notices.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncssh

from targets import remote_scripts
from targets.errors import CommandRefused
from targets.run_channel import SUDO_REFUSALS, LineHandler, RunChannel
from targets.server_offer import where

__all__ = ["CommandRefused", "RemoteCommand", "RemoteEnding", "RemoteStatus", "run_remote"]

RemoteStatus = Literal["success", "failed", "timeout", "cancelled", "unreachable"]

DRAIN_SECONDS = 5.0
"""After the run's exit status came: the most its output may take to end (a process that left its session may
hold the channel open for ever)."""
START_WAIT_SECONDS = 5.0
"""On a timeout or cancel before the run's first line: the most to wait for it, to learn which session to stop."""
STOP_BOUND_SECONDS = 60.0
"""The most the SIGKILL step of a stop may take, channel opening included (a bound for hangs only)."""
CLEANUP_SECONDS = 15.0
"""The most the removal of the private directory may take once the run has ended."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_RESERVED_ENV = frozenset({"AHOP_FILES_DIR"})
_SUDO_ASKING = "a password is required"


@dataclass(frozen=True)
class RemoteCommand:
    """What to run on a host, and as whom."""

    workdir: str
    """Absolute path on the host of the directory that holds the template's files; the entry runs there."""
    argv: list[str]
    """The entry and its arguments, e.g. `["./deploy.sh"]` or `["python3", "main.py"]`; never a secret."""
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    """Added to the entry's environment; may hold secrets."""
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Plain file names → contents, written mode 0600 into the private directory `$AHOP_FILES_DIR` before the run
    and removed after it; may hold secrets."""
    sudo: bool = False
    """Run the entry as root through sudo (`sudo -n`, or `sudo -S` with `become_password`)."""
    become_password: str | None = field(default=None, repr=False)
    """The password sudo asks for on this host; None when its user may sudo without one (NOPASSWD)."""

    def __post_init__(self) -> None:
        if not self.workdir.startswith("/") or "\x00" in self.workdir:
            raise CommandRefused(
                f"a remote run's workdir is an absolute path on the host (starting with /, without NUL), "
                f"not {self.workdir!r}"
            )
        if not self.argv or not self.argv[0] or any("\x00" in part for part in self.argv):
            raise CommandRefused(
                f"a remote run's argv is a non-empty list of arguments without NUL whose first names the entry "
                f"(e.g. ['./deploy.sh']), not {self.argv!r}"
            )
        for name, value in self.environment.items():
            if not _ENV_NAME.fullmatch(name):
                raise CommandRefused(
                    f"environment variable name {name!r} is not a shell name; expected letters, digits and _ "
                    "that do not start with a digit"
                )
            if name in _RESERVED_ENV:
                raise CommandRefused(f"environment variable {name} is set by the run itself and cannot be given")
            if "\x00" in value:
                raise CommandRefused(f"the value of environment variable {name} contains NUL, which no process gets")
        for name in self.files:
            if not _FILE_NAME.fullmatch(name):
                raise CommandRefused(
                    f"file name {name!r} is not a plain file name; expected letters, digits, . _ - "
                    "(not starting with . or -), without any directory"
                )
        if self.become_password is not None and ("\n" in self.become_password or "\x00" in self.become_password):
            raise CommandRefused("a become password cannot contain a newline or NUL (sudo reads one line)")


@dataclass
class RemoteEnding:
    """How a remote run ended. `exit_code` is the entry's exit status (128+N when signal N ended it, as a shell
    reports), None when the entry never started or its status never came back."""

    status: RemoteStatus
    exit_code: int | None
    started_at: datetime
    finished_at: datetime
    error: str | None


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    command: RemoteCommand,
    *,
    timeout: float,  # noqa: ASYNC109 - the run's own limit, which decides its status, not a bound of this call
    cancelled: asyncio.Event,
    on_line: LineHandler,
    kill_grace: float = 5.0,
) -> RemoteEnding:
    """Run `command` on the host of `conn` to its end, passing each output line to `on_line` as it comes.

    `success` iff the entry exits 0, `failed` for any other exit or when it cannot start (the error says why:
    sudo that needs a become password, a password sudo refused, a missing working directory, …), `timeout` after
    `timeout` seconds and `cancelled` once `cancelled` is set (both stop the whole run, see the module docstring),
    `unreachable` when the connection dies first. A timeout not above 0 or a negative `kill_grace` raises
    CommandRefused. When `on_line` raises, the run goes on without it, and the error is raised once it has ended.
    When this coroutine is itself cancelled, the run's channel closes, and the wrapper on the host stops the run.
    """
    if not timeout > 0:
        raise CommandRefused(f"a remote run's timeout is a number of seconds above 0, not {timeout}")
    if not kill_grace >= 0:
        raise CommandRefused(f"a remote run's kill grace is a number of seconds of at least 0, not {kill_grace}")
    started_at = datetime.now(UTC)
    run = _RemoteRun(conn, command, timeout, kill_grace, on_line)
    status, exit_code, error = await run.execute(cancelled)
    ending = RemoteEnding(status, exit_code, started_at, datetime.now(UTC), error)
    if run.session is not None and run.session.failure is not None:
        raise run.session.failure
    return ending


_Result = tuple[RemoteStatus, int | None, str | None]


class _Lost(Exception):
    """The connection died under a step of the run."""


class _RemoteRun:
    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        command: RemoteCommand,
        timeout: float,
        kill_grace: float,
        on_line: LineHandler,
    ) -> None:
        self.conn = conn
        self.command = command
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.on_line = on_line
        peer = conn.get_extra_info("peername")
        self.host = where(str(peer[0]), int(peer[1])) if peer else "the host"
        with_password = command.sudo and command.become_password is not None
        self.sudo = (["sudo", "-S", "-p", "", "--"] if with_password else ["sudo", "-n", "--"]) if command.sudo else []
        self.password = f"{command.become_password}\n".encode() if with_password else None
        self.session: RunChannel | None = None

    async def execute(self, cancelled: asyncio.Event) -> _Result:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        directory: str | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    directory = await self._prepare()
            except TimeoutError:
                return "timeout", None, f"the run could not be prepared on {self.host} within {self.timeout:g} s"
            except _Lost as exc:
                return "unreachable", None, f"the connection to {self.host} was lost while preparing the run: {exc}"
            except _SetupFailed as exc:
                return "failed", None, str(exc)
            if cancelled.is_set():
                return "cancelled", None, "cancelled before the run started"
            try:
                return await self._run(directory, deadline, cancelled)
            except _Lost as exc:
                return "unreachable", None, f"the connection to {self.host} was lost: {exc}"
        finally:
            if directory is not None:
                await self._remove(directory)

    async def _exec(self, command: str, stdin: bytes | None = None) -> asyncssh.SSHCompletedProcess:
        """Run a short program on its own exec channel; raises _Lost when the connection dies under it."""
        try:
            process = await self.conn.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc
        try:
            if stdin is not None:
                process.stdin.write(stdin)
            process.stdin.write_eof()
            result = await process.wait()
        except (asyncssh.Error, OSError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc
        finally:
            process.close()
        if result.exit_status is None and result.exit_signal is None:
            raise _Lost("the channel closed without an exit status")
        return result

    async def _prepare(self) -> str:
        environment = remote_scripts.environment_file(self.command.environment)
        made = await self._exec(remote_scripts.prepare_command(), environment)
        _, marked, directory = _text(made.stdout).rpartition(remote_scripts.DIRECTORY_MARK)
        directory = directory.strip()
        # The mark comes last, once all went well; on any failure the program has removed what it made.
        if made.exit_status != 0 or not marked or not directory.startswith("/"):
            raise _SetupFailed(
                f"could not make a private directory for the run on {self.host} (mktemp in $TMPDIR or /tmp, "
                f"exit status {made.exit_status}): {_text(made.stderr).strip() or 'no message'}"
            )
        for name, content in self.command.files.items():
            wrote = await self._exec(remote_scripts.write_file_command(f"{directory}/files/{name}"), content)
            if wrote.exit_status != 0:
                await self._remove(directory)
                raise _SetupFailed(
                    f"could not write the run's file {name} into {directory}/files on {self.host}: "
                    f"{_text(wrote.stderr).strip() or f'exit status {wrote.exit_status}'}"
                )
        return directory

    async def _remove(self, directory: str) -> None:
        """Remove the private directory when the connection still allows; the wrapper removes it when it ends."""
        if self.conn.is_closed():
            return
        try:
            async with asyncio.timeout(CLEANUP_SECONDS):
                await self._exec(remote_scripts.remove_command(directory))
        except (_Lost, TimeoutError):
            return

    async def _run(self, directory: str, deadline: float, cancelled: asyncio.Event) -> _Result:
        mark = f"ahop-run-started:{secrets.token_hex(8)}"
        line = remote_scripts.run_command(
            directory, self.command.workdir, self.command.argv, mark, self._looks(self.kill_grace), self.sudo
        )
        session = self.session = RunChannel(mark, self.on_line, watch_refusal=self.password is not None)
        try:
            channel, _ = await self.conn.create_session(lambda: session, line, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc
        if self.password is not None:
            channel.write(self.password)  # the run's stdin stays open: its end tells the wrapper the connection died
        cancel = asyncio.ensure_future(cancelled.wait())
        try:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            ended_or_cancelled: list[asyncio.Future[Any]] = [session.ended, cancel]
            await asyncio.wait(ended_or_cancelled, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if session.ended.done():
                return await self._ending(session)
            stop: Literal["timeout", "cancelled"] = "cancelled" if cancel.done() else "timeout"
            return await self._stopped(directory, session, stop)
        finally:
            cancel.cancel()
            channel.close()

    async def _ending(self, session: RunChannel) -> _Result:
        """The result of a run that ended by itself."""
        if session.password_refused and not session.session_id.done():
            return "failed", None, f"sudo on {self.host} refused the become password of its user"
        await asyncio.wait([session.closed], timeout=DRAIN_SECONDS)
        if session.exit_status is None and session.exit_signal is None:
            if session.lost is not None:
                raise _Lost(str(session.lost))
            return "failed", None, f"the run's channel on {self.host} closed without an exit status"
        if not session.session_id.done():
            return "failed", None, self._not_started(session)
        if session.exit_signal is not None:
            return "failed", None, f"the run on {self.host} was ended by signal {session.exit_signal}"
        code = session.exit_status
        return ("success", 0, None) if code == 0 else ("failed", code, None)

    def _not_started(self, session: RunChannel) -> str:
        said = "\n".join(line for _, line in session.before_start).strip()
        if self.command.sudo and _SUDO_ASKING in said:
            return (
                f"sudo on {self.host} needs a password for its user and none was given: set the become password "
                "(become_password) of this host's credential, or let the user run sudo without one (NOPASSWD)"
            )
        if self.command.sudo and any(refusal in said for refusal in SUDO_REFUSALS):
            return f"sudo on {self.host} refused the become password of its user"
        return f"the run did not start on {self.host} (exit status {session.exit_status}): {said or 'no message'}"

    async def _stopped(self, directory: str, session: RunChannel, stop: Literal["timeout", "cancelled"]) -> _Result:
        """Stop a run on a timeout or cancel, and say how it ended."""
        why = (
            f"the run ran longer than its timeout of {self.timeout:g} s and was stopped"
            if stop == "timeout"
            else "the run was cancelled and stopped"
        )
        started_or_ended: list[asyncio.Future[Any]] = [session.session_id, session.ended]
        await asyncio.wait(started_or_ended, timeout=START_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if not session.session_id.done():
            if session.lost is not None:
                raise _Lost(str(session.lost))
            # Closing the channel ends its stdin: sudo still waiting gives up, a wrapper that started stops.
            return stop, None, f"{why} before its entry started on {self.host}"
        try:
            left = await self._stop_session(directory, session.session_id.result())
        except _Lost as exc:
            raise _Lost(f"{exc} (while stopping the run: {why})") from exc
        await asyncio.wait([session.closed], timeout=DRAIN_SECONDS)
        if left:
            why += f"; still running on {self.host} after SIGKILL: {left}"
        return stop, session.exit_status, why

    @staticmethod
    def _looks(seconds: float) -> int:
        """How many of the host's looks at a session (one each `POLL_SECONDS`) make `seconds`."""
        return math.ceil(seconds / remote_scripts.POLL_SECONDS)

    async def _stop_session(self, directory: str, session_id: int) -> str:
        """SIGTERM, `kill_grace`, SIGKILL until the host finds none of the session; what it still finds, if any."""
        term_command = remote_scripts.stop_command(
            directory, session_id, "TERM", self._looks(self.kill_grace), self.sudo
        )
        term = asyncio.ensure_future(self._exec(term_command, self.password))
        try:
            await asyncio.wait([term], timeout=self.kill_grace)
            if term.done() and term.result().exit_status == 0:
                return ""
            try:
                async with asyncio.timeout(STOP_BOUND_SECONDS):
                    command = remote_scripts.stop_command(
                        directory,
                        session_id,
                        "KILL",
                        self._looks(STOP_BOUND_SECONDS / 2),
                        self.sudo,
                    )
                    killed = await self._exec(command, self.password)
            except TimeoutError as exc:
                raise _Lost(f"{self.host} did not confirm the SIGKILL within {STOP_BOUND_SECONDS:g} s") from exc
            # The SIGTERM step ends at its next look now that the session is empty.
            await asyncio.wait([term], timeout=DRAIN_SECONDS)
            if killed.exit_status == remote_scripts.STOP_LEFT_OVER:
                return _text(killed.stdout).strip().replace("\n", "; ")
            if killed.exit_status != 0:
                return (
                    f"unknown (stopping failed with exit status {killed.exit_status}: {_text(killed.stderr).strip()})"
                )
            return ""
        finally:
            if not term.done():
                term.cancel()
            elif not term.cancelled():
                term.exception()  # retrieved: a lost connection is reported by the SIGKILL step


class _SetupFailed(Exception):
    """The host refused a step of the preparation; the message says which and why."""


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
