"""A script's output as lines: cut to a bounded length, decoded, secrets masked, read until its pipes end.

A line longer than `MAX_LINE_BYTES` (or output without any newline) is passed on in pieces; secret parameter values
are replaced by `MASK`; once the script's group is killed, what a process that left it still writes is read only
within `DRAIN_SECONDS` of silence, `LATE_OUTPUT_BYTES` and `LATE_OUTPUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable

from targets.output_lines import MAX_LINE_BYTES, line_pieces, line_text

MASK = "********"
DRAIN_SECONDS = 0.5
"""After the script exits: how long its output may take to end before what is left of its group is killed, and
then how long a pipe may stay silent before it counts as held open by a process that left the group."""
LATE_OUTPUT_BYTES = 4 * 1024 * 1024
LATE_OUTPUT_SECONDS = 30.0
"""Most output read after the group is killed. What pipes and buffers held is read within these limits even by a
slow consumer; beyond them it comes from a process outside the group."""

LineCallback = Callable[[str, str], Awaitable[None]]
Emit = Callable[[bytes], Awaitable[None]]


def secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """What finds any of the non-empty `secrets` in a line, the longest first; None when there is none."""
    ordered = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def line_emitter(stream: str, on_line: LineCallback, secrets: re.Pattern[str] | None) -> Emit:
    """What passes one line of `stream` (`stdout` or `stderr`) to `on_line` as text, secrets masked."""

    async def emit(data: bytes) -> None:
        # NUL cannot be stored as text (PostgreSQL refuses it): binary output shows U+FFFD in its place.
        text = line_text(data)
        await on_line(stream, secrets.sub(MASK, text) if secrets is not None else text)

    return emit


async def read_lines(reader: asyncio.StreamReader, emit: Emit, group_ended: asyncio.Event) -> None:
    """Pass each line (without its newline) to `emit`; lines longer than `MAX_LINE_BYTES` go in pieces.

    Once the script's group is killed, a pipe still open is held by a process that left the group (setsid):
    reading stops when it stays silent for `DRAIN_SECONDS`, or brings more than `LATE_OUTPUT_BYTES`, or after
    `LATE_OUTPUT_SECONDS`. A slow `emit` does not lose lines. When `emit` fails, reading goes on without it, so
    the script never blocks on a full pipe; the error is raised once the output has ended.
    """
    failure: Exception | None = None

    async def deliver(data: bytes) -> None:
        nonlocal failure
        if failure is None:
            try:
                await emit(data)
            except Exception as exc:
                failure = exc

    pending, late, cut_off = b"", 0, float("inf")
    loop = asyncio.get_running_loop()
    while True:
        if group_ended.is_set():
            cut_off = min(cut_off, loop.time() + LATE_OUTPUT_SECONDS)
            if loop.time() > cut_off:
                break
        try:
            chunk = await asyncio.wait_for(reader.read(MAX_LINE_BYTES), DRAIN_SECONDS)
        except TimeoutError:
            if group_ended.is_set():
                break
            continue
        if not chunk:
            break
        if group_ended.is_set() and (late := late + len(chunk)) > LATE_OUTPUT_BYTES:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            for piece in line_pieces(line):
                await deliver(piece)
        *full, pending = line_pieces(pending)  # keep at most MAX_LINE_BYTES of an unfinished line
        for piece in full:
            await deliver(piece)
    if pending:
        await deliver(pending)
    if failure is not None:
        raise failure
