"""The exec channel of a remote run as the client sees it: the run's lines, its start mark, its exit, its end.

Until the wrapper's mark arrives (the first line on stdout once the entry started, with its session id), lines
are the host's own (a login script's, sudo's) and are kept to tell why a run did not start; once it came, they are
passed on, those kept first. The channel stays open after the end of the output for the exit status that follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from targets.output_lines import LineSplitter

LineHandler = Callable[[str, str], None]
"""`on_line(stream, line)`: `stream` is `stdout` or `stderr`, `line` the text without its newline."""
MAX_LINES_BEFORE_START = 1000
"""Lines the host writes before the entry starts (sudo's messages, a login script's) that are kept."""
SUDO_REFUSALS = ("Sorry, try again.", "incorrect password attempt")
"""What sudo says when it refuses a password."""


class RunChannel(asyncssh.SSHClientSession[bytes]):
    """The run's channel: its lines to `on_line`, its mark, its exit status, its end."""

    def __init__(self, mark: str, on_line: LineHandler, watch_refusal: bool) -> None:
        loop = asyncio.get_running_loop()
        self._mark = mark + " "
        self._on_line = on_line
        self._watch_refusal = watch_refusal
        self._lines = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.session_id: asyncio.Future[int] = loop.create_future()
        """The entry's session (and process group) id, once its first line came."""
        self.ended: asyncio.Future[None] = loop.create_future()
        """Done at the exit status, at the channel's end, or when sudo refuses the password."""
        self.closed: asyncio.Future[None] = loop.create_future()
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: Exception | None = None
        self.password_refused = False
        self.before_start: list[tuple[str, str]] = []
        self.failure: Exception | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        stream = "stderr" if datatype == asyncssh.EXTENDED_DATA_STDERR else "stdout"
        for line in self._lines[stream].feed(data):
            self._line(stream, line)

    def eof_received(self) -> bool:
        self._flush()
        return True  # stay open: the exit status comes after the end of the output

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status
        self._end()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal
        self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush()
        self.lost = exc
        if not self.closed.done():
            self.closed.set_result(None)
        self._end()

    def _flush(self) -> None:
        for stream, lines in self._lines.items():
            for line in lines.finish():
                self._line(stream, line)

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def _line(self, stream: str, line: str) -> None:
        if self.session_id.done():
            self._deliver(stream, line)
            return
        # A login script may have printed text without a newline just before the mark.
        earlier_text, found, session_id = line.rpartition(self._mark)
        if stream == "stdout" and found and session_id.isdigit():
            if earlier_text:
                self.before_start.append((stream, earlier_text))
            self.session_id.set_result(int(session_id))
            for earlier_stream, earlier in self.before_start:
                self._deliver(earlier_stream, earlier)
            self.before_start.clear()
            return
        if len(self.before_start) < MAX_LINES_BEFORE_START:
            self.before_start.append((stream, line))
        if self._watch_refusal and stream == "stderr" and any(refusal in line for refusal in SUDO_REFUSALS):
            self.password_refused = True  # sudo would wait for another try on the stdin held open
            self._end()

    def _deliver(self, stream: str, line: str) -> None:
        if self.failure is None:
            try:
                self._on_line(stream, line)
            except Exception as exc:
                self.failure = exc
