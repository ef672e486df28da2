"""Progress of a long command for the person watching it: a bar with counts and bytes on a terminal, a plain
line every few seconds when the output is a file or a pipe, nothing with --json (stdout is for the report)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

PLAIN_EVERY = 5.0
"""Seconds between two plain progress lines."""


class TerminalProgress:
    """Progress drawn with rich on stderr (a terminal), or plain lines on stderr otherwise."""

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        self.command = command
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._lock = threading.Lock()
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._bytes = 0
        self._last_line = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> TerminalProgress:
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[size]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._name:
            self._line()

    def phase(self, name: str, total: int | None = None) -> None:
        with self._lock:
            if self._name and self._bar is None:
                self._line()
            self._name, self._total, self._done, self._bytes = name, total, 0, 0
            if self._bar is not None:
                self._task = self._bar.add_task(f"{self.command} {name}", total=total, size="")
            else:
                self._line()

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        with self._lock:
            self._done += items
            self._bytes += nbytes
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, advance=items, size=decimal(self._bytes) if self._bytes else "")
            elif time.monotonic() - self._last_line >= PLAIN_EVERY:
                self._line()

    def _line(self) -> None:
        count = f"{self._done}/{self._total}" if self._total is not None else str(self._done)
        size = f", {decimal(self._bytes)}" if self._bytes else ""
        print(f"{self.command}: {self._name}: {count}{size}", file=self.stream, flush=True)
        self._last_line = time.monotonic()
