"""How `ahop` commands talk to an operator: exit codes, error messages, settings errors, logging."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3

SettingsT = TypeVar("SettingsT")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ahop: {message}", err=True)
    sys.exit(code)


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
