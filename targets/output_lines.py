"""A remote run's output as lines: bytes as they arrive in, text lines out, a partial last line at the end.

Lines are cut at `\\n` before they are decoded, so a character split across two packets arrives whole. A line
longer than `MAX_LINE_BYTES` (or output without any newline) is passed on in pieces, never cut inside a UTF-8
character, so memory stays bounded whatever a script writes. The text is what the worker's own runs give: invalid
UTF-8 shows U+FFFD, a trailing `\\r` (CRLF) is dropped and NUL shows U+FFFD (PostgreSQL cannot store it).
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_LINE_BYTES = 64 * 1024
"""A longer line is passed on in pieces of at most this many bytes."""


class LineSplitter:
    """The lines of one stream (stdout or stderr), fed in chunks of any size."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        """The lines that `data` completes (and the full pieces of an overlong one), without their newlines."""
        *complete, self._pending = (self._pending + data).split(b"\n")
        lines = [line_text(piece) for line in complete for piece in line_pieces(line)]
        *full, self._pending = line_pieces(self._pending)
        return lines + [line_text(piece) for piece in full]

    def finish(self) -> list[str]:
        """What is left once the stream has ended: the last line when it had no newline, else nothing."""
        rest, self._pending = self._pending, b""
        return [line_text(rest)] if rest else []


def line_text(line: bytes) -> str:
    """A line's bytes as text, as every run's output shows it."""
    return line.decode("utf-8", errors="replace").removesuffix("\r").replace("\x00", "\ufffd")


def line_pieces(line: bytes) -> Iterator[bytes]:
    """`line` cut into pieces of at most `MAX_LINE_BYTES`, never inside a UTF-8 character."""
    while len(line) > MAX_LINE_BYTES:
        cut = MAX_LINE_BYTES
        while cut > MAX_LINE_BYTES - 3 and line[cut] & 0xC0 == 0x80:  # a continuation byte: back to its start
            cut -= 1
        yield line[:cut]
        line = line[cut:]
    yield line
