"""How `ahop` commands talk to an operator: error messages, JSON, tables and key/value lines, settings, logging.

Output rules: `--json` prints JSON with non-ASCII text as it is (a Chinese name stays readable). A table on a
terminal is sized to it; off a terminal (a pipe, a file) it is one tab-separated line per row under a header line,
and no value is ever cut. One object (`task show`, `template show`) prints as `key: value` lines, nested objects
as dotted keys. Errors go to stderr, once, as `ahop: <message>`, and end the command with the code that
`ahop.exit_codes` gives (`fail` for the errors a command names, `run` for those it leaves to the map).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click

from ahop.exit_codes import EXIT_BAD_INPUT, code_for_error

SettingsT = TypeVar("SettingsT")
NEWLINE = "\n"


def fail(message: str, code: int) -> NoReturn:
    """Print `ahop: message` on stderr and exit with `code` (see `ahop.exit_codes`)."""
    click.echo(f"ahop: {message}", err=True)
    sys.exit(code)


def run(command: click.Command, name: str) -> None:
    """Run the command line. An error no command handled, but that the operator can act on (a domain error, a
    service that did not answer), is printed once and exits with the code `ahop.exit_codes` maps it to; any other
    error is a bug, and its traceback shows."""
    try:
        command.main(prog_name=name)
    except Exception as exc:
        code = code_for_error(exc)
        if code is None:
            raise
        fail(str(exc) or type(exc).__name__, code)


def load_settings(factory: Callable[[], SettingsT]) -> SettingsT:
    """Build a settings object from the environment; a bad value exits 2 naming the variable."""
    from pydantic import ValidationError

    try:
        return factory()
    except ValidationError as exc:
        problems = "; ".join(
            f"AHOP_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        fail(f"invalid settings: {problems}", EXIT_BAD_INPUT)


def configure_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def to_json(data: Any, indent: int | None = 2) -> str:
    """JSON as `--json` prints it: non-ASCII characters as they are, not as `\\uXXXX` escapes."""
    return json.dumps(data, indent=indent, ensure_ascii=False, default=str)


def echo_json(data: Any, indent: int | None = 2) -> None:
    click.echo(to_json(data, indent))


def _on_terminal() -> bool:
    return sys.stdout.isatty()


def cell(row: Any, column: str) -> str:
    """The text of `column` (a dotted path such as `artifact.digest`) in `row`; empty when it is absent."""
    value: Any = row
    for part in column.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(not isinstance(item, dict | list) for item in value):
        return ",".join(_text(item) for item in value)
    if isinstance(value, dict | list):
        return to_json(value, indent=None)
    return str(value)


def echo_table(rows: list[Any], columns: list[str]) -> None:
    """A table of `rows`: sized to the terminal on one, else tab-separated lines with every value whole."""
    cells = [[cell(row, column) for column in columns] for row in rows]
    if not _on_terminal():
        for line in [columns, *cells]:
            click.echo("\t".join(" ".join(value.split()) for value in line))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for values in cells:
        table.add_row(*values)
    Console().print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def echo_fields(data: dict[str, Any]) -> None:
    """One `key: value` line per field of one object; nested objects as dotted keys, lists of objects as JSON,
    text that spans lines as a JSON string (so each field stays on one line)."""
    for key, value in _flatten(data):
        text = _text(value)
        click.echo(f"{key}: {to_json(text, indent=None) if NEWLINE in text else text}")


def show_one(data: dict[str, Any], as_json: bool) -> None:
    """One object of the API (`task show`, `template show`, a changed template): its JSON with `--json`, else
    `key: value` lines."""
    if as_json:
        echo_json(data)
    else:
        echo_fields(data)


def show(data: Any, as_json: bool, columns: list[str]) -> None:
    """An API answer: its JSON with `--json`, else a table of its items (a page, a list, or one object)."""
    if as_json:
        echo_json(data)
        return
    rows = data["items"] if isinstance(data, dict) and "items" in data else data if isinstance(data, list) else [data]
    echo_table(rows, columns)
    if isinstance(data, dict) and "total" in data:
        if _on_terminal():
            click.echo(f"{len(rows)} of {data['total']}")
        elif data["total"] > len(rows):  # stdout stays the table alone for scripts; say what it leaves out
            click.echo(f"ahop: {len(rows)} of {data['total']} shown", err=True)
